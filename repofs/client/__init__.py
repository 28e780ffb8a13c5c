"""Commands for operators that read a mount's files like any script would
(`repofs wait`): they work on any host that has the mount."""
