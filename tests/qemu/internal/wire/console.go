package wire

// Markers of the console built-ins (minish, ptyxfer), shared by the guest
// helper that prints them and the host tests that wait for them.
const (
	// MinishPrompt is what minish prints before reading each line.
	MinishPrompt = "minish$ "
	// PTYReady is what ptyxfer writes on the terminal once it is raw: the
	// host may send its bytes after seeing it.
	PTYReady = "PTYXFER-READY\n"
)
