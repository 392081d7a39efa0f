"""CLI commands, one module each; every module has register(subparsers) and sets args.handler."""

COMMAND_MODULES = ["init", "validate", "lab", "configure", "rules", "reconcile", "plan", "status", "backup",
                   "audit", "switchover", "dr", "connect"]
