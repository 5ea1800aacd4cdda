"""S3 through s3fs, with keys taken as names: imported only when an ``s3://`` location is used.

s3fs reads ``?versionId=...`` in a path as the version to read (``S3FileSystem.split_path``), so the
object ``a?versionId=1.jpg`` would be read as ``a``. batchclf never asks for a version (an object is
read as it is now), and here a key is only a name. A class of its own module, so an instance pickles.
"""

from __future__ import annotations

from s3fs import S3FileSystem


class OpaqueKeyS3FileSystem(S3FileSystem):
    def split_path(self, path):
        bucket, key, _ = super().split_path(path)
        if "?versionId=" in path:
            whole = self._strip_protocol(path).lstrip("/")
            key = whole[len(bucket) + 1 :] + path[len(path.rstrip("/")) :]
        return bucket, key, None
