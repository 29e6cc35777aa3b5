"""A dataset run as a process of its own, for tests/runs/test_runs.py: the demo model explains every image of
FOLDER into OUT, against fixed captions or (MODE=function) a caption function. With CRASH_AFTER=n the
caption function SIGKILLs the process when asked for its n-th image: a crash mid-shard, mid-run; with
CRASH_AT_WRITE=n the process SIGKILLs itself as its n-th file is about to take its name: a crash between
a shard's write and its rename.

    python tests/runs_worker.py FOLDER OUT [fixed|function]     (also under torchrun)
"""

import os
import signal
import sys

import clipx
import clipx.files
from clipx.runs.explain_dataset import explain_dataset
from clipx.runs.runner import init_distributed

CAPTIONS = ["a red circle", "a blue square"]
calls = 0


def captions(path: str) -> list[str]:
    global calls
    calls += 1
    if calls == int(os.environ.get("CRASH_AFTER", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    if "no-caption" in path:
        raise RuntimeError(f"no caption for {os.path.basename(path)}")
    return CAPTIONS[len(os.path.basename(path)) % 2:] + ["a green star"]  # the path's alone: a resumed run asks again


def crash_at_write(n: int) -> None:
    put_in_place, writes = clipx.files.put_in_place, [0]

    def put(*args, **kwargs):
        writes[0] += 1
        if writes[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        put_in_place(*args, **kwargs)

    clipx.files.put_in_place = put


if __name__ == "__main__":
    folder, out = sys.argv[1], sys.argv[2]
    if "CRASH_AT_WRITE" in os.environ:
        crash_at_write(int(os.environ["CRASH_AT_WRITE"]))
    mode = sys.argv[3] if len(sys.argv) > 3 else "fixed"
    init_distributed()
    explain_dataset(clipx.load("demo"), folder, out, captions if mode == "function" else CAPTIONS,
                    method="relevance", shard_size=4, batch_size=3, progress=False)
