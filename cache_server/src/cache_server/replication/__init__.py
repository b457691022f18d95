"""Several server processes on one storage directory (`--workers N`): the index each keeps
(storage.py) and what they tell each other (peers.py). One process needs none of it."""
