"""`python -m tests.serve_faults ARGS`: `python -m deploy.serve ARGS` with faults on cue.

Test-only. The real server process (uvicorn, ONNX Runtime, the real bundle) with the
length-bucketed classifier wrapped so that the texts of a batch steer it, through files
in $TUNELINE_TEST_FAULTS:
- every text run is appended to `seen.txt` (what inference actually ran);
- a text containing STALL hangs its batch (after touching `stalled`) until `release`
  exists, as a wedged ONNX Runtime call would;
- a text containing BOOM raises an error whose message holds a "secret".
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from components.release.inference import BucketedClassifier

SECRET = "secret detail: /srv/models/v7/weights.bin is corrupt"
_real_logits = BucketedClassifier.logits


def _logits(self, texts, timings=None):
    control = Path(os.environ["TUNELINE_TEST_FAULTS"])
    with open(control / "seen.txt", "a") as fh:
        fh.write("".join(f"{t}\n" for t in texts))
    if any("STALL" in t for t in texts):
        (control / "stalled").touch()
        while not (control / "release").exists():
            time.sleep(0.02)
    if any("BOOM" in t for t in texts):
        raise RuntimeError(SECRET)
    return _real_logits(self, texts, timings)


if __name__ == "__main__":  # patched only in the server process, never when imported
    from deploy.serve.__main__ import main

    BucketedClassifier.logits = _logits
    sys.exit(main(sys.argv[1:]))
