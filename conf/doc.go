// Package conf reads hamr's TOML configuration file.
//
// Load and Parse return a *Config with every default applied and every
// value checked, or an *Errors listing each problem found, sorted by line,
// one per line as
//
//	FILE:LINE: key: what is wrong (what is allowed)
//
// so that `hamr check` can show all of them at once. Section and key names
// follow mysqlrouter.conf ([routing.NAME]) and keepalived.conf
// ([vrrp.NAME]); README.md (Configuration) maps one onto the other.
//
// A Config is plain data: conf opens no sockets and reads no files other
// than the one named in Load.
package conf
