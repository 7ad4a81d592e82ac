// Package kcmdline picks the parameters of a kernel module out of the
// kernel command line, as kmod's modprobe does: the kernel applies
// MODULE.PARAM=VALUE words by itself only to built-in modules, so whoever
// loads a module must pass them (finit_module's parameter string). It is
// shared by internal/devopen (the agent loading vfio, vfio-pci,
// uio_pci_generic) and the guest helper of tests/qemu.
//
// Hand-written, not u-root's cmdline.FlagsForModule: that one reads only
// the process's /proc/cmdline (nothing to test against), dequotes values
// (a quoted value with a space then splits in the kernel's parameter
// parser) and passes words with an empty parameter name.
package kcmdline

import "strings"

// ModuleParams returns the parameters cmdline gives module, in the form
// finit_module takes: "PARAM=VALUE PARAM2=VALUE2", in command-line order.
// Dashes and underscores in module names are the same. A word is skipped
// when its module part holds "=" (it is a value such as root=a.b), or its
// parameter name is empty or holds "/".
func ModuleParams(cmdline, module string) string {
	want := strings.ReplaceAll(module, "-", "_")
	var out []string
	for _, w := range strings.Fields(cmdline) {
		mod, param, ok := strings.Cut(w, ".")
		if !ok || mod == "" || strings.Contains(mod, "=") || strings.ReplaceAll(mod, "-", "_") != want {
			continue
		}
		if k, _, _ := strings.Cut(param, "="); k == "" || strings.Contains(k, "/") {
			continue
		}
		out = append(out, param)
	}
	return strings.Join(out, " ")
}
