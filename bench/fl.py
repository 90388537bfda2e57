"""Federated learning side by side: Agora's nodes and Flower's legacy gRPC engine, same task.

The same CNN (examples/federation/digits-cnn/model.py, 9,930 parameters) on scikit-learn's
digits split across the clients, IID and non-IID (``training_jobs.datasets.digits_partitions``;
the same partition files for both systems), the same initial weights (the factory's on seed
0), 1 local epoch in batches of 16 with SGD at the example federation's learning rate and
momentum, all clients every round, FedAvg, federated evaluation of the global model on each
client's held-out 20 % (the rows an Agora node holds back: a permutation seeded by the sha256
of the partition; Flower's clients hold back the same ones).

* Agora: a coordinator and one node per provider, real processes on loopback sharing one
  devchain (bench/_fl_agora.py): signed messages, safetensors bound to them, warm sandboxed
  trainers (bubblewrap), every round recorded and anchored on the chain.
* Flower: ``flwr.server.start_server`` with FedAvg and one ``flwr.client.start_client``
  process per client running the same loop (bench/_fl_flower.py).

Figures, each with the ratio Agora/Flower:

* final accuracy, example-weighted over the clients' held-out rows;
* per-round overhead: round wall time minus the slowest client's training time. A round is
  training plus federated evaluation in both (Agora's round start does both on each
  provider; Flower runs a fit round then an evaluate round); Flower's fit round alone is shown
  too. Median over rounds 2..N (round 1 includes the warm-up). Agora's is broken down by the
  proxy's timestamps (``_fl_agora.phases``: the coordinator, the round starts, the providers,
  the updates, the close);
* bytes on the wire per round (TCP payload through a counting proxy, bench/_wire.py: HTTP
  messages with their envelopes and headers for Agora, gRPC over HTTP/2 for Flower) against
  the raw weights both ways (clients x 2 x 4 bytes x parameters). A round whose messages were
  not one round start and one update per provider is flagged ``!!`` (the repeats count in its
  bytes);
* time from start to round 1 done (Agora: from ``POST /start``, with the nodes serving and the
  trainers not yet started; Flower: from launching its server and client processes);
* Agora with differential privacy, on the first partitioning: node-side clipping and noise of
  each update (``node_clip_norm``, ``node_noise_multiplier``; its epsilon is for a provider's
  whole dataset, so useful accuracy leaves it large), and DP-SGD in the trainer (Opacus; epsilon
  per example): the accuracy and the epsilon each provider reported;
* Agora with secure aggregation (SecAgg+): its bytes per round against the raw weights and
  against the plain round (its expansion), by message type.

    .venv/bin/python bench/fl.py              # 5 clients, 20 rounds, IID and non-IID, DP, SecAgg
    .venv/bin/python bench/fl.py --quick      # 2 clients, 3 rounds, IID: checks the script works
    .venv/bin/python bench/fl.py --only iid --dp-noise 0 --dp-sgd 0 --py-spy /tmp/spy   # profiles

Needs the bench extra (``pip install -e '.[bench]'``: Flower) and bubblewrap.
Targets: accuracy within 0.5 points of Flower's, overhead no more than Flower's, bytes at
most 1.05x the raw weights, round 1 done under 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from _fl_agora import PHASES, AgoraRun, agora_net, phases, run_agora, when, wire  # noqa: E402
from _fl_flower import FlowerRun, initial_weights, run_flower  # noqa: E402
from _node import met  # noqa: E402

EXAMPLE = ROOT / "examples" / "federation" / "digits-cnn" / "federation.yaml"
ACCURACY_POINTS, BYTES_RATIO, FIRST_ROUND_SECONDS = 0.5, 1.05, 5.0


# figures of one run ----------------------------------------------------------------------------


def weighted(parts: list[dict[str, Any]], key: str = "accuracy") -> float:
    total = sum(int(p["num_examples"]) for p in parts)
    return sum(float(p[key]) * int(p["num_examples"]) for p in parts) / total


def agora_figures(run: AgoraRun, raw: int) -> dict[str, Any]:
    fed = run.federation
    records = sorted(fed["rounds_detail"], key=lambda r: r["round"])
    rounds, final = records[: fed["rounds"]], records[-1]
    overhead, walls = [], []
    for r in rounds:
        wall = when(r["ended_at"]) - when(r["started_at"])
        slowest = max(
            (c["train_seconds"] for c in r["contributions"] if c["state"] == "RECEIVED"), default=0.0
        )
        walls.append(wall)
        overhead.append(wall - slowest)
    numbers = {r["round"] for r in rounds}
    ended = when(final["ended_at"]) if final.get("ended_at") else run.finished
    return {
        "accuracy": float(final["metrics"]["accuracy"]),
        "curve": [float(r["metrics"]["accuracy"]) for r in records[1:]],
        "overhead": overhead[1:] or overhead,
        "wall": walls[1:] or walls,
        "first_round": when(rounds[0]["ended_at"]) - run.started,
        **wire(run, numbers, len(fed["detail"]["members"])),
        "raw": raw,
        "after_rounds": run.finished - ended,
        "phases": {k: v[1:] or v for k, v in phases(rounds, run.exchanges).items()},
        "initial_sha256": rounds[0]["global_in"],
        "members": fed["detail"]["members"],
        "last_privacy": [c["privacy"] for c in rounds[-1]["contributions"]],
    }


def flower_figures(run: FlowerRun, raw: int) -> dict[str, Any]:
    rounds = run.rounds
    overhead, fit_overhead, walls, wire, fit_wire = [], [], [], [], []
    for r in rounds:
        slowest = max(float(f["train_seconds"]) for f in r["fit"])
        wall = r["evaluate_results"] - r["fit_configured"]
        walls.append(wall)
        overhead.append(wall - slowest)
        fit_overhead.append(r["fit_results"] - r["fit_configured"] - slowest)
        # from the moment the round's instructions go out (round 1: once every client connected)
        wire.append(sum(c.size for c in run.chunks if r["fit_sent"] <= c.at <= r["evaluate_results"]))
        fit_wire.append(sum(c.size for c in run.chunks if r["fit_sent"] <= c.at <= r["fit_results"]))
    return {
        "accuracy": weighted(rounds[-1]["evaluate"]),
        "curve": [weighted(r["evaluate"]) for r in rounds],
        "overhead": overhead[1:] or overhead,
        "fit_overhead": fit_overhead[1:] or fit_overhead,
        "wall": walls[1:] or walls,
        "first_round": rounds[0]["evaluate_results"] - run.launched,
        "connected": rounds[0]["fit_sent"] - run.launched,
        "bytes": statistics.mean(wire),
        "fit_bytes": statistics.mean(fit_wire),
        "raw": raw,
        "failures": sum(r["fit_failures"] + r["evaluate_failures"] for r in rounds),
    }


# printing --------------------------------------------------------------------------------------


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms"


def line(what: str, agora: str, flower: str, ratio: str, verdict: str = "") -> None:
    print(f"  {what:42} {agora:>12} {flower:>12} {ratio:>12}  {verdict}")


def report(name: str, a: dict[str, Any], f: dict[str, Any]) -> None:
    print(f"\n{name}")
    line("", "Agora", "Flower", "Agora/Flower")
    points = (a["accuracy"] - f["accuracy"]) * 100
    line(
        "final accuracy (held-out, weighted)",
        f"{a['accuracy']:.4f}",
        f"{f['accuracy']:.4f}",
        f"{a['accuracy'] / f['accuracy']:.3f}x",
        f"{points:+.1f} points; within {ACCURACY_POINTS}: {met(abs(points) <= ACCURACY_POINTS)}",
    )
    ao, fo = statistics.median(a["overhead"]), statistics.median(f["overhead"])
    line(
        "per-round overhead (median)",
        ms(a["overhead"]),
        ms(f["overhead"]),
        f"{ao / fo:.2f}x",
        f"<= Flower: {met(ao <= fo)}",
    )
    for what, key in PHASES:
        if a["phases"][key]:
            line(f"  {what}", ms(a["phases"][key]), "", "")
    line(
        "  Flower's fit round alone",
        "",
        ms(f["fit_overhead"]),
        f"{ao / statistics.median(f['fit_overhead']):.2f}x",
    )
    line(
        "round wall time (median)",
        ms(a["wall"]),
        ms(f["wall"]),
        f"{statistics.median(a['wall']) / statistics.median(f['wall']):.2f}x",
    )
    raw = a["raw"]
    line(
        "bytes on the wire per round",
        f"{a['bytes']:,.0f}",
        f"{f['bytes']:,.0f}",
        f"{a['bytes'] / f['bytes']:.2f}x",
    )
    line(
        "  / raw weights both ways",
        f"{a['bytes'] / raw:.3f}x",
        f"{f['bytes'] / raw:.3f}x",
        "",
        f"Agora <= {BYTES_RATIO}x: {met(a['bytes'] / raw <= BYTES_RATIO)} (raw {raw:,} B)",
    )
    line("  Flower's fit round alone / raw", "", f"{f['fit_bytes'] / raw:.3f}x", "")
    line(
        "  Agora: safetensors, rest",
        f"{a['blob_bytes'] / raw:.3f}x",
        "",
        "",
        f"{a['messages']:.0f} messages a round, {(a['bytes'] - a['blob_bytes']) / a['messages']:,.0f} B each "
        "of envelope, signature and HTTP",
    )
    line(
        "start to round 1 done",
        f"{a['first_round']:.2f} s",
        f"{f['first_round']:.2f} s",
        f"{a['first_round'] / f['first_round']:.2f}x",
        f"Agora < {FIRST_ROUND_SECONDS} s: {met(a['first_round'] < FIRST_ROUND_SECONDS)}",
    )
    line("  Flower: to all clients connected", "", f"{f['connected']:.2f} s", "")
    line("  Agora: last round to COMPLETED", f"{a['after_rounds']:.2f} s", "", "", "final model, ONNX checks")
    curve = "  ".join(f"{x:.3f}" for x in a["curve"][:: max(1, len(a["curve"]) // 5)])
    print(f"  Agora accuracy by round:  {curve}")
    curve = "  ".join(f"{x:.3f}" for x in f["curve"][:: max(1, len(f["curve"]) // 5)])
    print(f"  Flower accuracy by round: {curve}")
    if set(a["statuses"]) != {200} or f["failures"]:
        print(f"  !! HTTP statuses {a['statuses']}, Flower failures {f['failures']}")
    for repeat in a["repeats"]:
        print(f"  !! Agora {repeat}: counted in its bytes")


def report_dp(label: str, dp: dict[str, Any], plain: dict[str, Any]) -> None:
    last = dp["last_privacy"]
    epsilons = [float(p["epsilon"]) for p in last if p.get("epsilon") is not None]
    print(f"\n{label}:")
    print(
        f"  final accuracy {dp['accuracy']:.4f} (without privacy {plain['accuracy']:.4f}, "
        f"{(dp['accuracy'] - plain['accuracy']) * 100:+.1f} points)"
    )
    print(
        f"  epsilon each provider reported after {last[0].get('rounds')} rounds at delta "
        f"{last[0].get('delta')}: " + ", ".join(f"{e:,.2f}" for e in epsilons)
    )
    print(f"  ({last[0].get('note')})")


def report_secagg(label: str, sa: dict[str, Any], plain: dict[str, Any]) -> None:
    raw = sa["raw"]
    print(f"\n{label}:")
    print(
        f"  final accuracy {sa['accuracy']:.4f} (without it {plain['accuracy']:.4f}, "
        f"{(sa['accuracy'] - plain['accuracy']) * 100:+.1f} points)"
    )
    print(
        f"  bytes on the wire per round {sa['bytes']:,.0f} in {sa['messages']:.0f} messages: "
        f"{sa['bytes'] / raw:.3f}x the raw weights both ways, {sa['bytes'] / plain['bytes']:.3f}x the plain "
        "round's (SecAgg's expansion)"
    )
    print("    " + ", ".join(f"{kind} {size:,.0f} B" for kind, size in sa["by_type"].items() if size))
    wall = statistics.median(sa["wall"]) / statistics.median(plain["wall"])
    print(
        f"  round wall time (median) {ms(sa['wall']).strip()}, {wall:.2f}x the plain round's; "
        f"start to round 1 done {sa['first_round']:.2f} s"
    )


# the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 clients, 3 rounds, IID: checks that it works")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--only", choices=("iid", "non-iid"), help="one partitioning only")
    parser.add_argument("--dp-clip", type=float, default=1.0, help="node_clip_norm of the node-side DP run")
    parser.add_argument("--dp-noise", type=float, default=0.1, help="its node_noise_multiplier (0: no run)")
    parser.add_argument("--dp-sgd", type=float, default=1.0, help="DP-SGD noise multiplier (0: no run)")
    parser.add_argument("--dp-sgd-clip", type=float, default=1.0, help="DP-SGD per-sample clip norm")
    parser.add_argument(
        "--secagg", action=argparse.BooleanOptionalAction, default=True, help="a secure aggregation run too"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="profile two nodes (the GIL holder) in the first federation",
    )
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rounds, args.only = 2, 3, args.only or "iid"
    from training_jobs.datasets import digits_partitions

    example = yaml.safe_load(EXAMPLE.read_text())
    recipe = dict(example["recipe"])
    seed = int(example["model"]["seed"])
    raw = args.clients * 2 * sum(int(v.nbytes) for v in initial_weights(seed).values())
    names = [args.only] if args.only else ["iid", "non-iid"]
    print(
        f"digits CNN ({raw // (8 * args.clients):,} parameters), {args.clients} clients, "
        f"{args.rounds} rounds, "
        f"{recipe['local_epochs']} local epoch, batch {recipe['batch_size']}, SGD lr {recipe['lr']} "
        f"momentum {recipe.get('momentum', 0)}, FedAvg, all clients every round"
    )
    private: dict[str, dict[str, Any]] = {}
    if args.dp_noise > 0:
        label = f"node-side privacy (node_clip_norm {args.dp_clip}, node_noise_multiplier {args.dp_noise})"
        private[label] = {"node_clip_norm": args.dp_clip, "node_noise_multiplier": args.dp_noise}
    if args.dp_sgd > 0:
        label = f"DP-SGD in the trainer (noise_multiplier {args.dp_sgd}, max_grad_norm {args.dp_sgd_clip})"
        private[label] = {"dp_sgd": {"noise_multiplier": args.dp_sgd, "max_grad_norm": args.dp_sgd_clip}}
    with tempfile.TemporaryDirectory(prefix="agora-bench-fl-") as tmp:
        root = Path(tmp)
        partitions = {
            name: digits_partitions(root / "data" / name, args.clients, iid=name == "iid") for name in names
        }
        flower = {
            name: flower_figures(
                run_flower(root / "flower" / name, partitions[name], args.rounds, recipe, seed), raw
            )
            for name in names
        }
        common = {"rounds": args.rounds, "min_participants": args.clients}
        # each private run on offerings of its own: a provider's ledger of what this coordinator
        # spent on an offering carries over to its next federation on it
        offerings = partitions | {f"dp{i}": partitions[names[0]] for i in range(len(private))}
        if args.secagg:
            offerings["secagg"] = partitions[names[0]]
        with agora_net(root / "agora", offerings) as net:
            agora = {}
            for index, name in enumerate(names):
                profile = args.py_spy if index == 0 else None
                agora[name] = agora_figures(run_agora(net, name, profile=profile, **common), raw)
                check_same_rows(agora[name], partitions[name], seed)
            dp = {
                label: agora_figures(run_agora(net, f"dp{i}", privacy=p, **common), raw)
                for i, (label, p) in enumerate(private.items())
            }
            secure = (
                agora_figures(run_agora(net, "secagg", secure_aggregation={"enabled": True}, **common), raw)
                if args.secagg
                else None
            )
    for name in names:
        report(name.upper(), agora[name], flower[name])
    for label, figures in dp.items():
        report_dp(f"{names[0].upper()}, Agora with {label}", figures, agora[names[0]])
    if secure is not None:
        report_secagg(f"{names[0].upper()}, Agora with secure aggregation (SecAgg+)", secure, agora[names[0]])


def check_same_rows(figures: dict[str, Any], partitions: list[Path], seed: int) -> None:
    """Both systems start from the same weights and hold back the same rows: the coordinator's
    round 1 started from the weights Flower's server got, and each provider's dataset version
    is the sha256 of the partition file a Flower client splits on."""
    import hashlib

    from federation.tensors import sha256_of

    if figures["initial_sha256"] != sha256_of(initial_weights(seed)):
        raise RuntimeError("Agora's federation started from other initial weights than Flower's")
    files = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in partitions)
    if sorted(m["dataset_sha256"] for m in figures["members"]) != files:
        raise RuntimeError(
            "the providers' dataset versions are not the partition files Flower's clients read"
        )


if __name__ == "__main__":
    main()
