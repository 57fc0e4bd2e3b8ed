"""Command line (SPEC §1): argument parsing only; the work lives in the modules it calls.

Exit codes: 0 ok, 1 invalid config or failed check, 2 usage error, 3 could not bind or start.
"""

from __future__ import annotations

import argparse
import sys

from steelyard import BUILD, __version__

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_START = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steelyard", description="Steelyard: an L4/L7 load balancer."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the load balancer")
    run.add_argument("-c", "--config", default="steelyard.yaml", help="config file")
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("-c", "--config", default="steelyard.yaml", help="config file")
    check.add_argument("--strict", action="store_true", help="also fail on lint warnings")
    demo = sub.add_parser("demo", help="three demo servers, the balancer and the dashboard")
    demo.add_argument("--port", type=int, default=8080, help="balancer port (default 8080)")
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port (default 9901)")
    ctl = sub.add_parser("ctl", help="talk to a running instance's admin API", add_help=False)
    ctl.add_argument("args", nargs=argparse.REMAINDER)
    simulate = sub.add_parser("simulate", help="compare algorithms in a simulation", add_help=False)
    simulate.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    # pass-through commands parse their own options: argparse.REMAINDER does not capture an
    # option that comes first (`steelyard simulate --list`, `steelyard ctl --admin URL ...`)
    if raw and raw[0] == "simulate":
        from steelyard.simulate import main as simulate_main

        return simulate_main(raw[1:])
    if raw and raw[0] == "ctl":
        from steelyard.admin.ctl import main as ctl_main

        return ctl_main(raw[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "version":
        print(f"steelyard {__version__}")
        print("data path: compiled (mypyc)" if BUILD == "compiled" else "data path: Python")
        return EXIT_OK
    if args.command == "check":
        from steelyard.config import check_command

        return check_command(args.config, args.strict)
    if args.command == "run":
        from steelyard.runner import run

        return run(args.config)
    if args.command == "demo":
        from steelyard.demo import run_demo

        return run_demo(args.port, args.admin_port)
    if args.command == "ctl":
        from steelyard.admin.ctl import main as ctl_main

        return ctl_main(args.args)
    if args.command == "simulate":
        from steelyard.simulate import main as simulate_main

        return simulate_main(args.args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
