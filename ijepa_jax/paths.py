"""Facts about paths that several layers need (nothing here writes)."""


import os


def is_remote(path: str) -> bool:
  """A bucket URL (gs://, s3://), reached through etils.epath."""
  return '://' in path


def output_path(path: str, explicit: bool, overwrite: bool = False) -> str:
  """Where a tool writes its output. A free `path`, or any with `overwrite`, as it is; a
  default name that is taken gets the next free one (`eval_5.json` -> `eval_5.1.json`, ...),
  so an earlier output is never replaced unasked; an explicit path that is taken is an error
  (FileExistsError) saying to pass --overwrite."""
  if overwrite or not os.path.exists(path):
    return path
  if explicit:
    raise FileExistsError(f'{path} exists; pass --overwrite to replace it, or another name')
  stem, ext = os.path.splitext(path)
  n = 1
  while os.path.exists(f'{stem}.{n}{ext}'):
    n += 1
  return f'{stem}.{n}{ext}'
