"""Times the proof of ownership against the local stack: N proofs (after 2 warm-ups), each
mailing a token through the MX-routing relay into the trusted Dovecot and finding and deleting
it over IMAP with the verifier's own adapters. Writes median and p90 seconds of the proof step
and the CPU seconds per proof to bench/results/ownership-proof.json."""

import argparse
import asyncio
import functools
import json
import secrets
import ssl
import statistics
import time
from pathlib import Path

from imap_verifier.adapters.proof_mail import RelayProofSender
from imap_verifier.adapters.typed_inbox import typed_inbox
from imap_verifier.domain.ownership import ProofPolicy, prove_ownership
from localinfra.stack import LocalStack
from mailbox_link_contract.events import ServerSettings
from mailbox_link_shared.mail_resolver import resolve_endpoint as resolve_mail_endpoint
from mailbox_link_shared.network_policy import parse_networks, parse_ports

# The stack's servers listen on ephemeral ports, outside the default mail ports.
resolve_endpoint = functools.partial(
    resolve_mail_endpoint, allowed_ports=parse_ports(["32768-60999"])
)
RESULTS = Path(__file__).parent / "results" / "ownership-proof.json"


async def _run(stack: LocalStack, count: int) -> dict[str, object]:
    endpoints = stack.endpoints
    tls = ssl.create_default_context(cafile=endpoints.ca_file)
    sender = RelayProofSender("127.0.0.1", endpoints.relay_port, 10.0)
    allow = parse_networks(["127.0.0.0/8"])
    samples: list[float] = []
    cpu: list[float] = []
    for n in range(count + 2):
        hexed = secrets.token_hex(4)
        address, login, pw = f"bench-{hexed}@hosted.test", f"benchuser-{hexed}", f"pw-{hexed}"
        stack.add_mail_user(login, pw, address=address)
        await asyncio.sleep(1.1)  # Dovecot re-reads its users file at most once a second
        server = ServerSettings(
            host=endpoints.tls_hostname, port=endpoints.imaps_port, security="ssl", username=login
        )
        inbox = typed_inbox(server, pw, resolve_endpoint, allow, tls, 10.0)
        started, cpu_started = time.perf_counter(), time.process_time()
        await prove_ownership(
            address, "bench", "verify@mailbox-link.invalid", sender, inbox, ProofPolicy(30.0)
        )
        if n >= 2:
            samples.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
    ordered = sorted(samples)
    return {
        "proofs": count,
        "proof_seconds_median": statistics.median(ordered),
        "proof_seconds_p90": ordered[max(0, int(len(ordered) * 0.9) - 1)],
        "cpu_seconds_per_proof": statistics.mean(cpu),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    with LocalStack() as stack:
        figures = asyncio.run(_run(stack, args.count))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
