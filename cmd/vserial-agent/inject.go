package main

// maxResets is driver.Config.MaxResets for every device (0: the driver's
// default, 5 a minute). Only faultinject builds (inject_on.go) change it.
var maxResets int
