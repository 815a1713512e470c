package conf

import (
	"fmt"
	"sort"
	"strings"
)

// Error is one problem in a configuration file.
type Error struct {
	File string // file name as given to Load or Parse
	Line int    // 1-based line in File
	Key  string // dotted key such as routing.rw.bind_port; may be empty for syntax errors
	Msg  string // what is wrong (what is allowed)
}

func (e Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Key, e.Msg)
}

// Errors is every problem found in one file, sorted by line. Load and Parse
// return it as *Errors.
type Errors struct {
	List []Error
}

// Error prints one problem per line.
func (e *Errors) Error() string {
	var b strings.Builder
	for i, err := range e.List {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

// add records a problem. Lines below 1 become 1 so that every error points
// somewhere in the file.
func (e *Errors) add(err Error) {
	if err.Line < 1 {
		err.Line = 1
	}
	e.List = append(e.List, err)
}

// sort orders the list by line, keeping the order of discovery within a
// line, and drops exact repeats (one bad [health] value can otherwise be
// reported once per route that inherits it).
func (e *Errors) sort() {
	sort.SliceStable(e.List, func(i, j int) bool { return e.List[i].Line < e.List[j].Line })
	seen := make(map[Error]bool, len(e.List))
	out := e.List[:0]
	for _, err := range e.List {
		if !seen[err] {
			seen[err] = true
			out = append(out, err)
		}
	}
	e.List = out
}
