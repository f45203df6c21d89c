"""A pymongo client that reads its password from the environment, for FireWorks' own commands.

FireWorks' ``qlaunch`` and ``rlaunch`` connect to the LaunchPad with what
``my_launchpad.yaml`` says, which would put the MongoDB password in a file
that every worker reads. FireWorks builds its client with the class that its
``FW_config.yaml`` names under ``MongoClient``; naming this one there
(``configs/fireworks/FW_config.yaml``) lets ``my_launchpad.yaml`` name an
environment variable instead of holding the password::

    mongoclient_kwargs: {password_env: XTALLOOP_MONGO_PASSWORD}

SLURM's ``sbatch`` exports the submitting shell's environment to the job, so
``export XTALLOOP_MONGO_PASSWORD=...`` before ``qlaunch`` reaches every worker
and no file holds the password. This module imports nothing but pymongo:
FireWorks loads it while it is itself being imported.
"""

from __future__ import annotations

import os

import pymongo
from pymongo.errors import ConfigurationError


class EnvPasswordMongoClient(pymongo.MongoClient):
    """``pymongo.MongoClient`` with ``password_env``: the password from that variable.

    Without ``password_env`` it is pymongo's client unchanged, so xtalloop's
    own LaunchPad connections (which pass ``password``) work under the same
    FireWorks configuration.

    Raises
    ------
    pymongo.errors.ConfigurationError
        The variable is not set (one line naming it, never a value).
    """

    def __init__(self, host=None, port=None, *args, password_env: str | None = None, **kwargs):
        if password_env is not None and "password" not in kwargs:
            password = os.environ.get(password_env)
            if not password:
                raise ConfigurationError(
                    f"mongoclient_kwargs.password_env: ${password_env} is not set; export it "
                    "in the shell that runs qlaunch (sbatch passes it on to the jobs)")
            kwargs["password"] = password
        super().__init__(host, port, *args, **kwargs)
