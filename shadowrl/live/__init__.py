"""The live link: config sync, the traffic mirror and recordings of live traffic."""
