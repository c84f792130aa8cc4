"""What the test suites, the soak and the benchmark share: one concept per module.

`ports` (free loopback ports), `procs` (child processes and what /proc says about them),
`rabbitmq` (rabbitmqctl, a vhost of one's own, the deploy topology), `rabbit_node` (a private
RabbitMQ node to break at will), `gateway_process` (`python -m gateway` as an operator runs it),
`settings` (the settings of a gateway under test), `tcp_proxy` (a TCP proxy that holds, cuts
and refuses connections), `waits` (a bound on a wait that might never end).
Nothing here imports pytest: `python -m bench.run` uses it too.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "deploy" / "rabbitmq" / "definitions.json"
