"""Data: rosbag2 episodes -> video-compressed dataset -> training samples.

bag.py reads any rosbag2 bag; ingest.py writes the dataset (docs/dataset_format.md);
dataset.py, sampler.py and loader.py turn it into batches (docs/loader.md).
"""
