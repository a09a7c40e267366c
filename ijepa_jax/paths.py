"""Facts about paths that several layers need (no I/O)."""


def is_remote(path: str) -> bool:
  """A bucket URL (gs://, s3://), reached through etils.epath."""
  return '://' in path
