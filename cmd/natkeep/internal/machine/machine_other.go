//go:build !linux

package machine

// Read returns no facts where natkeep cannot read them: no budget.
func Read() Facts { return Facts{} }
