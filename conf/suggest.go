package conf

import "strings"

// suggest returns the known name the user most likely meant by s: a
// case-insensitive match, else the closest name within edit distance 2.
// It returns "" when nothing is close.
func suggest(s string, known []string) string {
	for _, k := range known {
		if strings.EqualFold(s, k) {
			return k
		}
	}
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(s), k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b in bytes,
// capped at 3: suggest only cares whether it is 2 or less.
func editDistance(a, b string) int {
	// Strings whose lengths differ by more than 2 are never close; this also
	// skips the quadratic work for long garbage keys.
	if d := len(a) - len(b); d > 2 || d < -2 {
		return 3
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
