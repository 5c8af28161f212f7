"""Run every benchmark in turn (`make bench`). Each prints its own ratios against its peer."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script in ("train_throughput.py", "phase_change.py", "analyze_checkpoints.py", "ablation_sweep.py", "attribution_patching.py"):
    print(f"\n######## {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True)
subprocess.run([sys.executable, str(HERE / "figure.py")], check=True)
