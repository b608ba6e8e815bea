"""Running `vnode run` as a service of the operating system (launchd on the Mac)."""
