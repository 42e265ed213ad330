//go:build !linux

package main

import (
	"log/slog"

	"github.com/natkeep/natkeep/relay"
)

// warnLimits checks nothing where the limits are not readable the Linux way.
func warnLimits(*slog.Logger, []relay.Route) {}
