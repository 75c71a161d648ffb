from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAPER_LOGS = ROOT / "examples" / "paper-logs" / "gsm8k"


@pytest.fixture
def paper_logs() -> Path:
    return PAPER_LOGS
