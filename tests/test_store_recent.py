"""A run's own job documents are answered from memory; every other lookup reads the store."""

import pytest
from jobflow import Flow, job

from xtalloop.store import collection_store, job_store
from xtalloop.store.recent import RecentJobDocs


class Counting:
    """The real embedded store, counting the queries that reach it."""

    def __init__(self, store):
        self.store, self.queries = store, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def query(self, *args, **kwargs):
        self.queries += 1
        return self.store.query(*args, **kwargs)


@pytest.fixture
def docs(store_config):
    inner = Counting(collection_store(store_config, "jobs"))
    inner.connect()
    yield RecentJobDocs(inner, capacity=3)
    inner.close()


def job_doc(uuid, index, value):
    return {"uuid": uuid, "index": index, "output": {"value": value}, "name": "j"}


def test_the_newest_index_and_one_index_come_from_memory_as_copies(docs):
    docs.update([job_doc("a", 1, 10), job_doc("a", 2, 20)], key=["uuid", "index"])
    inner = docs._store
    newest = docs.query_one({"uuid": "a"}, ["index"], sort={"index": -1})
    assert newest == {"index": 2} and inner.queries == 0
    first = next(docs.query({"uuid": "a", "index": 1}, ["output", "uuid", "index"]))
    assert first["output"] == {"value": 10} and inner.queries == 0
    first["output"]["value"] = -1  # jobflow writes blobs into what it reads
    assert docs.query_one({"uuid": "a", "index": 1})["output"] == {"value": 10}
    # what memory answered is what the store holds
    stored = inner.store.query_one({"uuid": "a", "index": 1}, ["output"])
    assert stored["output"] == {"value": 10}


def test_lookups_memory_cannot_answer_whole_read_the_store(docs, store_config):
    other = collection_store(store_config, "jobs")  # an earlier run's document
    other.connect()
    other.update([job_doc("a", 1, 10)], key=["uuid", "index"])
    other.close()
    docs.update([job_doc("a", 2, 20)], key=["uuid", "index"])
    inner = docs._store
    every = list(docs.query({"uuid": "a"}, sort={"index": 1}))
    assert [d["index"] for d in every] == [1, 2] and inner.queries == 1
    assert docs.query_one({"uuid": "a", "index": 1})["output"] == {"value": 10}
    assert inner.queries == 2  # an index this run did not write
    assert docs.query_one({"uuid": {"$in": ["a"]}, "index": 2})["output"]["value"] == 20
    assert docs.query_one({"uuid": "a", "index": 2}, ["output.value"])["output"]["value"] == 20
    assert docs.query_one({"uuid": "b"}) is None
    assert inner.queries == 5


def test_the_oldest_jobs_are_forgotten_beyond_the_capacity(docs):
    for i, uuid in enumerate("abcd"):
        docs.update(job_doc(uuid, 1, i), key=["uuid", "index"])
    assert docs.remembered == 3
    inner = docs._store
    assert docs.query_one({"uuid": "a"}, sort={"index": -1})["output"] == {"value": 0}
    assert inner.queries == 1  # forgotten, still found in the store
    docs.query_one({"uuid": "d"}, sort={"index": -1})
    assert inner.queries == 1


@job
def add(a, b):
    return a + b


def test_a_flow_runs_through_the_retrying_store_with_its_references_from_memory(
        store_config, tmp_path):
    from xtalloop.local_jobs import run_jobs
    from xtalloop.retry import RetryingJobStore

    first = add(1, 2)
    second = add(first.output, 10)
    third = add(second.output, first.output)
    store = RetryingJobStore.wrap(job_store(store_config), 5)
    counting = Counting(store.docs_store._store)
    store.docs_store._store = counting
    responses = run_jobs(Flow([first, second, third]), store, store_config, tmp_path / "jobs",
                         "run-1")
    assert responses[third.uuid][1].output == 16
    assert counting.queries == 0  # three jobs, three references: none read the store
    assert store.get_output(third.uuid) == 16


def test_a_copy_of_the_store_is_a_store(docs):
    import copy

    docs.update(job_doc("a", 1, 10), key=["uuid", "index"])
    twin = copy.copy(docs)
    assert twin.query_one({"uuid": "a"}, sort={"index": -1})["output"] == {"value": 10}
