"""The two demos, above everything they compose: `convlearn demo` (offline.py: the experiments end to end) and
`convlearn demo --live` (live.py: serve -> store -> learn -> gate -> versions -> serve). Their base model set-up
is shared (base.py). Only the CLI imports this package."""
