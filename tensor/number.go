package tensor

import (
	"errors"
	"fmt"
)

// Reading a tensor's JSON data array (decodeData), and its numbers fast.
// A V2 JSON request of an image holds hundreds of thousands of numbers,
// and strconv.ParseFloat, which reads every form Go's syntax allows
// (underscores, hex, infinities) before converting, took a quarter of an
// image job's server CPU. Most numbers a client
// writes are short decimals, which convert exactly in one floating-point
// operation; those are read here, and everything else by strconv.

// exactPow10 are the powers of ten a float64 holds exactly.
var exactPow10 = [...]float64{
	1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
	1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
}

// parseShortDecimal converts a JSON number whose digits, without the
// decimal point, make an integer m below 2^53 and whose value is m times
// a power of ten within ±22: m and the power are exact in a float64, so
// one multiplication or division rounds once, correctly (Clinger's fast
// path, which strconv takes too). Its result converted to float32 is
// the correctly rounded float32 as well: rounding first to 53 bits and
// then to 24 gives the same as rounding once when 53 ≥ 2·24+2
// (Figueroa, "When is double rounding innocuous?", 1995). ok is false for
// anything else (more digits, larger exponents, text that is not such a
// number), which the caller reads with strconv.
func parseShortDecimal(s []byte) (f float64, ok bool) {
	f, n, ok := shortDecimalPrefix(s)
	return f, ok && n == len(s)
}

// shortDecimalPrefix reads a short decimal (see parseShortDecimal) at the
// start of s and returns it and its length: the caller checks what
// follows, so that an array's numbers are read in the one pass that finds
// where each ends.
func shortDecimalPrefix(s []byte) (f float64, n int, ok bool) {
	i := 0
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		i++
	}
	var m uint64
	var intDigits, fracDigits int
	for ; i < len(s) && s[i]-'0' < 10; i++ {
		m = m*10 + uint64(s[i]-'0')
		intDigits++
		if m >= 1<<53 {
			return 0, 0, false
		}
	}
	if intDigits == 0 {
		return 0, 0, false
	}
	if i < len(s) && s[i] == '.' {
		i++
		for ; i < len(s) && s[i]-'0' < 10; i++ {
			m = m*10 + uint64(s[i]-'0')
			fracDigits++
			if m >= 1<<53 {
				return 0, 0, false
			}
		}
		if fracDigits == 0 {
			return 0, 0, false
		}
	}
	exp := -fracDigits
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		expNeg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			expNeg = s[i] == '-'
			i++
		}
		e, digits := 0, 0
		for ; i < len(s) && s[i]-'0' < 10; i++ {
			e = e*10 + int(s[i]-'0')
			digits++
			if e > 1000 {
				return 0, 0, false
			}
		}
		if digits == 0 {
			return 0, 0, false
		}
		if expNeg {
			e = -e
		}
		exp += e
	}
	f = float64(m)
	switch {
	case m == 0:
	case exp < -22 || exp > 22:
		return 0, 0, false
	case exp < 0:
		f /= exactPow10[-exp]
	default:
		f *= exactPow10[exp]
	}
	if neg {
		f = -f
	}
	return f, i, true
}

// decodeData converts a JSON array (flat or nested) of want elements of
// type dt to the binary layout.
func decodeData(raw []byte, dt Datatype, want int64, lim Limits) ([]byte, error) {
	size := int64(dt.Size())
	out := make([]byte, 0, want*size)
	var n int64
	depth := 0
	// FP32 and FP64 take a short decimal as it is (FP16 checks its range
	// in appendValue).
	short := dt == FP32 || dt == FP64
	for i := 0; i < len(raw); {
		switch c := raw[i]; c {
		case ' ', '\t', '\n', '\r', ',':
			i++
			continue
		case '[':
			depth++
			if depth > lim.MaxDepth {
				return nil, fmt.Errorf("data is nested deeper than %d levels", lim.MaxDepth)
			}
			i++
			continue
		case ']':
			depth--
			i++
			continue
		case '{':
			return nil, errors.New("data must be an array of values, not an object")
		}
		// A value: a string or a bare token.
		if n >= want {
			return nil, fmt.Errorf("data has more elements than the %d its shape needs", want)
		}
		var tok []byte
		quoted := raw[i] == '"'
		if quoted {
			end, err := stringEnd(raw, i)
			if err != nil {
				return nil, err
			}
			tok = raw[i:end]
			i = end
		} else {
			if short {
				// Most of an image's numbers: read as the scan finds
				// their end.
				if f, m, ok := shortDecimalPrefix(raw[i:]); ok && (i+m == len(raw) || isDelim(raw[i+m])) {
					out = appendFloat(out, dt, f)
					n++
					i += m
					continue
				}
			}
			j := i
			for j < len(raw) && !isDelim(raw[j]) {
				j++
			}
			tok = raw[i:j]
			i = j
		}
		var err error
		out, err = appendValue(out, tok, quoted, dt, lim)
		if err != nil {
			return nil, fmt.Errorf("element %d: %w", n, err)
		}
		n++
	}
	if n != want {
		return nil, fmt.Errorf("data has %d elements but its shape needs %d", n, want)
	}
	return out, nil
}

func isDelim(c byte) bool {
	return c == ',' || c == ']' || c == ' ' || c == '\t' || c == '\n' || c == '\r'
}
