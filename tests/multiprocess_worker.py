"""One process of a multi-process CPU run (tests/test_multiprocess.py starts two of these).

usage: multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR MAX_STEPS [FIELD=VALUE ...]
"""
import os
import sys

import jax

jax.config.update('jax_cpu_collectives_implementation', 'gloo')
pid, nproc, port, workdir, steps = sys.argv[1:6]
jax.distributed.initialize(coordinator_address=f'localhost:{port}', num_processes=int(nproc),
                           process_id=int(pid))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.demo import get_config  # noqa: E402
from ijepa_jax.trainer import train_and_evaluate  # noqa: E402

c = get_config()
c.batch_size, c.model.width, c.model.depth, c.model.num_heads = 16, 32, 2, 2
c.model.pred_width, c.model.pred_depth, c.probe.enabled = 16, 1, False
c.data.workers, c.log_every, c.num_epochs, c.max_steps = 2, 1, 0.05, int(steps)
c.checkpoint.every = 2
for item in sys.argv[6:]:
  key, value = item.split('=')
  section, _, field = key.rpartition('.')
  target = c[section] if section else c
  target[field] = type(target[field])(value)
out = train_and_evaluate(c, workdir)
print(f'process {pid} finished: step {out.get("step")} preempted {out.get("preempted", 0.0)}',
      flush=True)
