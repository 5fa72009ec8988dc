"""asv benchmarks of TDN (see README, "Continuous benchmarks (asv)").

asv imports every module here in the environment built from the commit under test. A
benchmark whose API is missing at that commit raises NotImplementedError in ``setup``,
which asv records as skipped, so one suite runs over the whole history.
"""
