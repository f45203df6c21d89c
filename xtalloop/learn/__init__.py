"""Learning from the loop's DFT results: training data, MACE training, metrics, model registry."""
