"""Write the TransformerLens parity table into docs/api.md from the rows of the parity suite
(tests/model/test_lens_parity.py: each row there is also a test that runs both libraries).

    python scripts/parity_table.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.model.test_lens_parity import table  # noqa: E402

DOC = ROOT / "docs" / "api.md"
START = "<!-- parity-table:start (scripts/parity_table.py writes this part from tests/model/test_lens_parity.py) -->"


def main() -> None:
    doc = DOC.read_text()
    block = f"{START}\n{table()}\n<!-- parity-table:end -->"
    if "<!-- parity-table:start" in doc:
        doc = re.sub(r"<!-- parity-table:start.*?<!-- parity-table:end -->", lambda _: block, doc, flags=re.S)
    else:
        raise SystemExit("docs/api.md has no parity-table markers; add them where the table belongs")
    DOC.write_text(doc)
    print(f"wrote the parity table to {DOC}")


if __name__ == "__main__":
    main()
