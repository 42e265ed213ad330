//go:build !linux

package intercept

import (
	"errors"
	"io"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
)

// errNeedsLinux is what every intercept subcommand fails with here.
var errNeedsLinux = errors.New("transparent interception needs Linux (nftables, TPROXY, SO_ORIGINAL_DST)")

// Install fails: interception needs Linux.
func Install(cfg *config.Intercept, out io.Writer) error { return errNeedsLinux }

// Remove fails: interception needs Linux.
func Remove(cfg *config.Intercept, out io.Writer) error { return errNeedsLinux }

// Show fails: interception needs Linux.
func Show(cfg *config.Intercept, out io.Writer) error { return errNeedsLinux }
