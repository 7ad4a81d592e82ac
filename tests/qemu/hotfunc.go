package qemu

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
)

// RootPortArgs are QEMU arguments for n PCIe root ports on q35 (ids rp1,
// rp2, ...), each able to take one hot-plugged function.
func RootPortArgs(n int) []string {
	var args []string
	for i := 1; i <= n; i++ {
		args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=rp%d,chassis=%d,slot=%d", i, i, i))
	}
	return args
}

// HotplugFunction adds a whole virtio-serial-pci function with QEMU id id
// on root port bus (device_add), then its ports (each with a socket
// chardev the test can dial as for cold-plugged ports; Nr must be set and
// unique across the guest). props are extra device properties.
func (g *Guest) HotplugFunction(ctx context.Context, id, bus, props string, ports ...Port) ([]Port, error) {
	dev := map[string]any{"driver": "virtio-serial-pci", "id": id, "bus": bus, "max_ports": 4}
	if props != "" {
		for _, kv := range bytes.Split([]byte(props), []byte(",")) {
			k, v, _ := bytes.Cut(kv, []byte("="))
			dev[string(k)] = string(v)
		}
	}
	if _, err := g.QMP.Execute(ctx, "device_add", dev); err != nil {
		return nil, fmt.Errorf("device_add %s: %w", id, err)
	}
	var out []Port
	for _, p := range ports {
		if p.Nr == 0 {
			return out, fmt.Errorf("guest: port %q on %s needs an explicit Nr", p.Name, id)
		}
		p = g.addPort(p, p.Nr)
		chardev := fmt.Sprintf("c%d", p.Nr)
		if _, err := g.QMP.Execute(ctx, "chardev-add", map[string]any{
			"id": chardev,
			"backend": map[string]any{"type": "socket", "data": map[string]any{
				"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": filepath.Join(g.Dir, fmt.Sprintf("p%d.sock", p.Nr))}},
				"server": true, "wait": false,
			}},
		}); err != nil {
			return out, err
		}
		pdev := map[string]any{"driver": p.device(), "bus": id + ".0", "chardev": chardev, "nr": portNr(p), "id": p.ID}
		if p.Name != "" {
			pdev["name"] = p.Name
		}
		if _, err := g.QMP.Execute(ctx, "device_add", pdev); err != nil {
			return out, err
		}
		out = append(out, p)
	}
	return out, nil
}

// portNr is the port number on its device: hot-plugged functions number
// their ports from 1 within the function, whatever the guest-wide Nr.
func portNr(p Port) int {
	if p.Console {
		return 0
	}
	return 1 + (p.Nr-1)%3
}

// UnplugFunction removes a function (device_del) and waits until QEMU
// reports it deleted, which under PCIe native hot-plug needs the guest to
// power the slot off (pciehp: about 5 s after the attention button).
func (g *Guest) UnplugFunction(ctx context.Context, id string) error {
	mark := g.QMP.Mark()
	if _, err := g.QMP.Execute(ctx, "device_del", map[string]any{"id": id}); err != nil {
		return err
	}
	_, _, err := g.QMP.WaitEvent(ctx, mark, "DEVICE_DELETED", func(e Event) bool {
		return bytes.Contains(e.Data, []byte(strconv.Quote(id)))
	})
	return err
}
