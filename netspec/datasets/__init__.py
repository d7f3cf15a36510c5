"""Dataset files: Caffe LMDBs (lmdb_io), MNIST conversion (mnist) and image means (image_mean).

Import the module you need; nothing is imported here, so the Data layer's use of
lmdb_io does not pull in the MNIST downloader (urllib, gzip) or click.
"""
