"""The committed protobuf/gRPC code matches ``proto/``: ``scripts/gen_proto.py --check``.

grpcio-tools is a development requirement (CI installs it), so its absence
fails this test rather than skipping it: a skipped drift check is no check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_proto.py"


def test_generated_code_matches_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        "generated code drifted from proto/; run `python scripts/gen_proto.py`\n"
        f"{result.stdout}{result.stderr}"
    )


def test_generated_service_code_imports_inside_its_package() -> None:
    code = (
        "from proxy_core_grpc._generated import service_pb2, service_pb2_grpc\n"
        "assert service_pb2.Frame.__module__ == 'proxy_core_grpc._generated.service_pb2'\n"
        "assert service_pb2_grpc.ProxySessionStub\n"
        "service = service_pb2.DESCRIPTOR.services_by_name['ProxySession']\n"
        "assert service.full_name == 'proxy_core.v1.ProxySession'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
