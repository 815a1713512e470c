package health

import (
	"bytes"
	"testing"
)

// FuzzPackets feeds arbitrary bytes to the decoders of the role check's
// result sets: they must return an error or values taken from the
// packet, never panic or read past it.
func FuzzPackets(f *testing.F) {
	f.Add(columnDef("Seconds_Behind_Source"), 3)
	f.Add([]byte{3, 'Y', 'e', 's', 0xfb, 2, '1', '2'}, 3)
	f.Add([]byte{0xfc, 0xff}, 1)
	f.Add([]byte{0xfe, 1, 2, 3, 4, 5, 6, 7, 0x80}, 1)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		if name, err := columnName(data); err == nil && !bytes.Contains(data, []byte(name)) {
			t.Fatalf("column name %q is not in the packet", name)
		}
		if n < 0 || n > maxColumns {
			return
		}
		row, err := parseRow(data, n)
		if err != nil {
			return
		}
		for _, v := range row {
			if v != nil && !bytes.Contains(data, v) {
				t.Fatalf("value %q is not in the packet", v)
			}
		}
		if _, _, used, ok := lenencInt(data); ok && used > len(data) {
			t.Fatalf("lenencInt used %d of %d bytes", used, len(data))
		}
	})
}
