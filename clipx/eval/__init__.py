"""How good an explanation is: faithfulness and localisation metrics, and the segmentation benchmarks'
readers and scores."""
