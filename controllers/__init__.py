"""controllers"""

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
"""Where ``ate engine`` takes commands unless told otherwise."""
DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5556"
"""Where ``ate engine`` publishes state and beats unless told otherwise."""
