package main

import (
	"fmt"
	"io"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/intercept"
)

// interceptCommand runs `natkeep intercept ...`; it reads only the
// NATKEEP_INTERCEPT* variables.
func interceptCommand(args []string, env map[string]string, stdout, stderr io.Writer) int {
	if len(args) == 1 {
		switch args[0] {
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, intercept.Usage)
			return 0
		}
	}
	if len(args) != 1 || (args[0] != "install" && args[0] != "remove" && args[0] != "show") {
		fmt.Fprintf(stderr, "natkeep: intercept: want one of install, remove or show, got %q\n\n%s", args, intercept.Usage)
		return 2
	}
	cfg, err := config.LoadIntercept(env)
	if err != nil {
		fmt.Fprintf(stderr, "natkeep: %v\n", err)
		return 2
	}
	switch args[0] {
	case "install":
		if !cfg.Enabled() {
			fmt.Fprintf(stderr, "natkeep: %s is empty: nothing to intercept (set it to a list such as udp:5060,tcp:10.0.0.0/8:5432)\n", config.VarIntercept)
			return 2
		}
		err = intercept.Install(cfg, stdout)
	case "remove":
		err = intercept.Remove(cfg, stdout)
	case "show":
		err = intercept.Show(cfg, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "natkeep: intercept %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
