"""What gets recorded and kept: recording rules, consent, regions (and, later,
retention, holds, disposal, capacity, archive)."""
