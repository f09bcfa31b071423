"""Value and loyalty scoring service: RFM, probabilistic CLV, composite value, tiers, loyalty."""
