"""The completion role: storage of results, the one completion per job, the status projection and
its rebuild, the watchdog and the early check. Imports runtime, never another role."""
