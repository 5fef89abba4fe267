"""backfill: bulk-load customer traits into Twilio Conversation Memory, and prove they landed."""

__version__ = "0.1.0"
