"""The online learner: the store's consented conversations in rounds (intake.py), each candidate gated
(gate.py), promoted versions made current for the server (learner.py); canary exposure (canary.py)."""
