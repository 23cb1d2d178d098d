"""``train.py`` with a test's hooks (run as a script by tests/test_preemption.py).

Environment:
    SIGNAL_AT_STEP: global step (1-based) at whose start the process sends itself
        ``SIGNAL`` (TERM, INT or KILL), as a cluster's scheduler would mid-step.
    RECORD: file that gets one JSON line ``[global step, running loss]`` per step.
The arguments are train.py's.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from unet3d.env import prepare_backend

prepare_backend()

import keras  # noqa: E402

import unet3d.cli.train as cli  # noqa: E402
from unet3d.training import run  # noqa: E402


class Hooks(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.at = int(os.environ.get("SIGNAL_AT_STEP", 0))
        self.signum = getattr(signal, f"SIG{os.environ.get('SIGNAL', 'TERM')}")
        self.record = os.environ["RECORD"]

    def _done(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_begin(self, batch, logs=None):
        if self._done() + 1 == self.at:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, batch, logs=None):
        with open(self.record, "a") as handle:
            handle.write(json.dumps([self._done(), float(logs["loss"])]) + "\n")


def train_with_hooks(config, resume=False, log=print):
    return run.train(config, resume=resume, log=log, callbacks=[Hooks()])


if __name__ == "__main__":
    cli.train = train_with_hooks
    sys.exit(cli.main(sys.argv[1:]))
