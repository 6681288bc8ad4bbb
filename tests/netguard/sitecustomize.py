"""Imported at start-up by every Python process the tests start: see netguard.py."""

import netguard

netguard.install()
