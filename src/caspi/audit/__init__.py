"""Phase 0: score every sampled utterance, decide PROCEED / CAUTION / STOP, write a cleaned manifest."""
