"""`kubectl qfleet` (installed as `kubectl-qfleet`, which kubectl finds on PATH as a plugin).

kubectl qfleet status NAME [-n NAMESPACE] [-o text|json|yaml]   the pipeline timeline of one QuantizedModel
kubectl qfleet plan --model FILE --gpu GPU ...                  the same as `qfleet plan`
kubectl qfleet promote|abort|pause|resume NAME [-n NAMESPACE]   act on the running canary
kubectl qfleet rollback NAME --to REVISION [-n NAMESPACE]       write an earlier revision's fields back into the spec
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from qfleet import kube
from qfleet.cli import main as qfleet_main
from qfleet.cli.rollback import RollbackRefused, rollback_patch
from qfleet.cli.timeline import render_status
from qfleet.pipeline.rollout_action import ACTION_ANNOTATION

Reader = Callable[[str, str | None], Mapping[str, Any]]
"""(name, namespace or None for the kubeconfig's) -> the QuantizedModel document."""
Patcher = Callable[[str, str | None, dict], Mapping[str, Any]]
"""(name, namespace, merge patch) -> the patched QuantizedModel document."""

ROLLOUT_VERBS: dict[str, tuple[str, dict | None]] = {
    "promote": ("promote the running canary to stable now, whatever its step", None),
    "abort": ("roll the running canary back now (the revision is not retried)", None),
    "pause": ("hold the canary at its weight (spec.rollout.paused: true; analysis and aborts go on)",
              {"spec": {"rollout": {"paused": True}}}),
    "resume": ("let the canary go on (spec.rollout.paused: false)", {"spec": {"rollout": {"paused": False}}}),
}
"""Each verb's merge patch. promote/abort (None here) are one-off annotations naming the running canary's revision,
`promote:REVISION`, which the operator removes once it has acted (or dropped them, for any other revision); pause
and resume edit the spec (under GitOps, commit them instead: see docs/gitops.md)."""


def action_patch(verb: str, document: Mapping[str, Any]) -> dict:
    """The annotation that asks for `verb` on the model's running canary; ActionRefused when none runs (an action left for no canary would otherwise wait for one nobody has looked at)."""
    canary = ((document.get("status") or {}).get("revision") or {}).get("canary")
    if not canary:
        stable = ((document.get("status") or {}).get("revision") or {}).get("stable")
        serving = f" (revision {stable} is stable)" if stable else ""
        raise ActionRefused(f"no canary is running{serving}: there is nothing to {verb}")
    return {"metadata": {"annotations": {ACTION_ANNOTATION: f"{verb}:{canary}"}}}


class ActionRefused(Exception):
    """promote/abort with no canary running."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl qfleet", description="qfleet commands for kubectl.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser("status", help="the pipeline timeline of a QuantizedModel",
                                 description="Conditions in pipeline order, capacity, ladder, calibration, engine, "
                                             "evaluation and history of one QuantizedModel.")
    status.add_argument("name", metavar="NAME")
    status.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    status.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text", help="output format")
    status.add_argument("--kubeconfig", help="path of the kubeconfig (default: KUBECONFIG or ~/.kube/config)")
    status.add_argument("--context", help="kubeconfig context")
    commands.add_parser("plan", help="KV-cache capacity of one replica, for every KV format (as `qfleet plan`)",
                        add_help=False)
    for verb, (help_text, _) in ROLLOUT_VERBS.items():
        command = commands.add_parser(verb, help=help_text, description=help_text)
        command.add_argument("name", metavar="NAME")
        command.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        command.add_argument("--kubeconfig", help="path of the kubeconfig (default: KUBECONFIG or ~/.kube/config)")
        command.add_argument("--context", help="kubeconfig context")
    rollback_help = ("write the artifact fields of an earlier revision in status.history back into the spec; it "
                     "returns as a canary through the steps (under GitOps, revert the commit instead)")
    rollback = commands.add_parser("rollback", help=rollback_help, description=rollback_help)
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--to", required=True, metavar="REVISION", help="a revision from status.history")
    rollback.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    rollback.add_argument("--kubeconfig", help="path of the kubeconfig (default: KUBECONFIG or ~/.kube/config)")
    rollback.add_argument("--context", help="kubeconfig context")
    return parser


def format_status(document: Mapping[str, Any], output: str, now: datetime | None = None) -> str:
    """The chosen output: the timeline, or the status as JSON or YAML (name and namespace included)."""
    if output == "text":
        return render_status(document, now)
    meta = document.get("metadata", {})
    view = {"name": meta.get("name"), "namespace": meta.get("namespace"), "generation": meta.get("generation"),
            "status": document.get("status") or {}}
    if output == "json":
        return json.dumps(view, indent=2) + "\n"
    return yaml.safe_dump(view, sort_keys=False)


def main(argv: Sequence[str] | None = None, reader: Reader | None = None, patcher: Patcher | None = None,
         now: datetime | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["plan"]:
        return qfleet_main.main(args_list)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command not in (*ROLLOUT_VERBS, "status", "rollback"):
        parser.print_help(sys.stderr)
        return 2
    read = reader or (lambda name, namespace: kube.read_model(name, namespace, kubeconfig=args.kubeconfig,
                                                              context=args.context))
    if args.command in ROLLOUT_VERBS:
        return _act(args, read, patcher)
    if args.command == "rollback":
        return _rollback(args, read, patcher)
    try:
        document = read(args.name, args.namespace)
    except kube.NotFound as error:
        print(f"kubectl qfleet status: error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(format_status(document, args.output, now or datetime.now(UTC)))
    return 0


def _act(args: argparse.Namespace, read: Reader, patcher: Patcher | None) -> int:
    patch = (patcher or (lambda name, namespace, body: kube.patch_model(
        name, namespace, body, kubeconfig=args.kubeconfig, context=args.context)))
    try:
        body = ROLLOUT_VERBS[args.command][1]
        if body is None:
            body = action_patch(args.command, read(args.name, args.namespace))
        document = patch(args.name, args.namespace, body)
    except (kube.NotFound, ActionRefused) as error:
        print(f"kubectl qfleet {args.command}: error: {error}", file=sys.stderr)
        return 1
    meta = document.get("metadata", {})
    canary = ((document.get("status") or {}).get("revision") or {}).get("canary")
    target = f"canary {canary}" if canary else "no canary is running now"
    print(f"quantizedmodel.qfleet.io/{meta.get('name')} {args.command} requested ({target})")
    return 0


def _rollback(args: argparse.Namespace, read: Reader, patcher: Patcher | None) -> int:
    patch = (patcher or (lambda name, namespace, body: kube.patch_model(
        name, namespace, body, kubeconfig=args.kubeconfig, context=args.context)))
    try:
        document = read(args.name, args.namespace)
        patch(args.name, args.namespace, rollback_patch(document, args.to))
    except (kube.NotFound, RollbackRefused) as error:
        print(f"kubectl qfleet rollback: error: {error}", file=sys.stderr)
        return 1
    print(f"quantizedmodel.qfleet.io/{args.name} spec set back to revision {args.to}: it returns as a canary "
          "through the steps (its Jobs are already done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
