"""Weight files in and out, without PyTorch and without executing any pickled code.

- PyTorch checkpoints (`torch.save`'s zip format, e.g. the official `*.pth.tar`):
  `read_torch` unpickles with an allow-list (containers, numbers, strings and tensors only;
  anything else is refused before it is built) and maps tensor storages onto numpy arrays;
  `write_torch` writes the same format, loadable by `torch.load(..., weights_only=True)`.
  Hand-written on purpose: the `torch` package would be a 2 GB dependency for two functions,
  and its own loader executes pickled code unless told otherwise.
- safetensors (`read_safetensors` / `write_safetensors`): the `safetensors` library.

What the arrays mean (official, timm and HuggingFace names) is `layouts.py`'s job.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import jax.numpy as jnp  # its bfloat16 is a numpy dtype (ml_dtypes)
import numpy as np
import safetensors
import safetensors.numpy


class InteropError(ValueError):
  """A weights file that cannot be read or does not fit; the message says what to change."""


# -- PyTorch's zip checkpoint format ---------------------------------------------------------

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': jnp.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
_DTYPE_STORAGES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}


class _Marker:
  """A torch global we allow, stood in for by a name (never imported or called)."""

  def __init__(self, name: str):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_):
  if not size:
    return storage[offset].copy()
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size),
                                         tuple(s * item for s in stride))
  return np.array(view)  # a contiguous copy, independent of the storage


def _rebuild_parameter(data, *_):
  return data


def _rebuild_from_type(func, _new_type, args, _state):
  return func(*args)


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._tensor', '_rebuild_from_type_v2'): _rebuild_from_type,
    ('torch.nn.parameter', 'Parameter'): _Marker('Parameter'),
    ('torch', 'Tensor'): _Marker('Tensor'),
    **{('torch', name): _Marker(name) for name in _STORAGE_DTYPES},
}


def read_torch(path: str) -> Any:
  """The object a `torch.save` zip file holds, tensors as numpy arrays (no code executed)."""
  if not os.path.isfile(path):
    raise InteropError(f'{path} does not exist')
  if not zipfile.is_zipfile(path):
    with open(path, 'rb') as f:
      head = f.read(2)
    legacy = head[:1] == b'\x80'
    raise InteropError(
        f'{path} is not a PyTorch zip checkpoint' + (
            ' (it looks like torch\'s legacy pre-1.6 format: load it in PyTorch and torch.save it '
            'again with a current version)' if legacy else
            ' (expected what torch.save writes, e.g. the official IN1K-vit.h.14-300e.pth.tar)'))
  with zipfile.ZipFile(path) as zf:
    pkls = [n for n in zf.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if not pkls:
      raise InteropError(f'{path} is a zip file but not a PyTorch checkpoint (no <name>/data.pkl)')
    prefix = pkls[0][:-len('data.pkl')]
    storages: dict[str, np.ndarray] = {}

    class Unpickler(pickle.Unpickler):
      def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
          raise InteropError(f'{path} holds a pickled {module}.{name}; only tensors, containers '
                             'and numbers are read (nothing in the file is executed)')
        return _ALLOWED[(module, name)]

      def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
          raise InteropError(f'{path}: unknown persistent record {pid!r}')
        _, kind, key, _, numel = pid
        dtype = _STORAGE_DTYPES.get(getattr(kind, 'name', None))
        if dtype is None:
          raise InteropError(f'{path}: unsupported tensor storage {kind!r}')
        if key not in storages:
          try:
            raw = zf.read(f'{prefix}data/{key}')
          except KeyError:
            raise InteropError(f'{path} is damaged: tensor data {key} is missing') from None
          arr = np.frombuffer(raw, np.dtype(dtype).newbyteorder('<'))
          if arr.size < numel:
            raise InteropError(f'{path} is damaged: tensor data {key} holds {arr.size} of '
                               f'{numel} values')
          storages[key] = arr
        return storages[key]

    try:
      return Unpickler(io.BytesIO(zf.read(pkls[0]))).load()
    except InteropError:
      raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as e:
      raise InteropError(f'{path} is damaged: {type(e).__name__}: {e}') from None


class _PickleWriter:
  """Protocol-2 pickle opcodes for nested dicts / lists / tuples / numbers / strings / arrays,
  with arrays as torch tensors (storages go to `self.storages`)."""

  def __init__(self):
    self.out = io.BytesIO()
    self.storages: list[np.ndarray] = []

  def _global(self, module: str, name: str) -> None:
    self.out.write(b'c' + module.encode() + b'\n' + name.encode() + b'\n')

  def _str(self, s: str) -> None:
    b = s.encode('utf-8')
    self.out.write(b'X' + struct.pack('<I', len(b)) + b)

  def _int(self, i: int) -> None:
    if -2 ** 31 <= i < 2 ** 31:
      self.out.write(b'J' + struct.pack('<i', i))
    else:
      b = i.to_bytes((i.bit_length() + 8) // 8, 'little', signed=True)
      self.out.write(b'\x8a' + bytes([len(b)]) + b)

  def _tuple(self, items) -> None:
    self.out.write(b'(')
    for x in items:
      self.save(x)
    self.out.write(b't')

  def _tensor(self, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    storage = _DTYPE_STORAGES.get(a.dtype)
    if storage is None:
      raise InteropError(f'cannot write a {a.dtype} array as a torch tensor')
    key = str(len(self.storages))
    self.storages.append(a)
    self._global('torch._utils', '_rebuild_tensor_v2')
    self.out.write(b'(')  # args of _rebuild_tensor_v2
    self.out.write(b'(')  # persistent id: ('storage', type, key, location, numel)
    self._str('storage')
    self._global('torch', storage)
    self._str(key)
    self._str('cpu')
    self._int(a.size)
    self.out.write(b't' + b'Q')  # TUPLE, BINPERSID
    self._int(0)
    self._tuple([int(s) for s in a.shape])
    strides = [int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim)]
    self._tuple(strides)
    self.out.write(b'\x89')  # requires_grad False
    self._global('collections', 'OrderedDict')
    self.out.write(b')R')  # OrderedDict() (backward hooks)
    self.out.write(b'tR')

  def save(self, x: Any) -> None:
    if isinstance(x, np.ndarray) or type(x).__module__.startswith(('jax', 'jaxlib')):
      self._tensor(np.asarray(x))
    elif isinstance(x, bool) or x is None:
      self.out.write({True: b'\x88', False: b'\x89', None: b'N'}[x])
    elif isinstance(x, (int, np.integer)):
      self._int(int(x))
    elif isinstance(x, (float, np.floating)):
      self.out.write(b'G' + struct.pack('>d', float(x)))
    elif isinstance(x, str):
      self._str(x)
    elif isinstance(x, dict):
      if isinstance(x, collections.OrderedDict):
        self._global('collections', 'OrderedDict')
        self.out.write(b')R')
      else:
        self.out.write(b'}')
      if x:
        self.out.write(b'(')
        for k, v in x.items():
          self.save(k)
          self.save(v)
        self.out.write(b'u')
    elif isinstance(x, list):
      self.out.write(b']')
      if x:
        self.out.write(b'(')
        for v in x:
          self.save(v)
        self.out.write(b'e')
    elif isinstance(x, tuple):
      self._tuple(x)
    else:
      raise InteropError(f'cannot write a {type(x).__name__} into a torch checkpoint')


def write_torch(path: str, obj: Any, archive: str = 'archive') -> None:
  """Write `obj` (dicts, lists, numbers, strings, numpy arrays) as `torch.save` would: a zip
  that `torch.load(path, weights_only=True)` reads, arrays becoming tensors."""
  w = _PickleWriter()
  w.out.write(b'\x80\x02')
  w.save(obj)
  w.out.write(b'.')
  tmp = f'{path}.tmp'
  with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED) as zf:
    zf.writestr(f'{archive}/data.pkl', w.out.getvalue())
    zf.writestr(f'{archive}/byteorder', 'little')
    for key, arr in enumerate(w.storages):
      zf.writestr(f'{archive}/data/{key}', arr.astype(arr.dtype.newbyteorder('<')).tobytes())
    zf.writestr(f'{archive}/version', '3\n')
  _readable(tmp)
  os.replace(tmp, path)  # never a half-written file under the real name


# -- safetensors ----------------------------------------------------------------------------

def _readable(path: str) -> None:
  """Give a written file the mode a new file gets here (0644 under the usual umask): the
  libraries that write through a temporary file leave it 0600."""
  mask = os.umask(0)
  os.umask(mask)
  os.chmod(path, 0o666 & ~mask)


def write_safetensors(path: str, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """`tensors` (and string `metadata`) to a safetensors file, written under a temporary name
  and moved into place (never a half-written file under the real name)."""
  tmp = f'{path}.tmp'
  try:
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp,
                                metadata=dict(metadata or {}))
  except (ValueError, TypeError, safetensors.SafetensorError) as e:
    raise InteropError(f'cannot write {path} as safetensors: {e}') from None
  _readable(tmp)
  os.replace(tmp, path)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, metadata) of a safetensors file."""
  if not os.path.isfile(path):
    raise InteropError(f'{path} does not exist')
  try:
    with safetensors.safe_open(path, framework='np') as f:
      meta = f.metadata() or {}
      return {name: f.get_tensor(name) for name in f.keys()}, dict(meta)
  except (safetensors.SafetensorError, ValueError, OSError) as e:
    raise InteropError(f'{path} is not a readable safetensors file ({e})') from None
