package httpadapter

import (
	"net/http"
	"reflect"
	"testing"
)

// TestHeaderChangesCopies checks that the changes headerChanges returns
// are copies, and that appending to the values of one name leaves the
// others alone although they share an array.
func TestHeaderChangesCopies(t *testing.T) {
	base := http.Header{"Kept": {"k"}, "Changed": {"old"}, "Deleted": {"d"}}
	h := http.Header{"Kept": {"k"}, "Changed": {"new1", "new2"}, "Added": {"a"}, "Nil": nil}
	d := headerChanges(base, h)
	want := http.Header{"Changed": {"new1", "new2"}, "Added": {"a"}, "Deleted": {}}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("headerChanges = %#v, want %#v", d, want)
	}
	h["Changed"][0], h["Added"][0] = "mutated", "mutated"
	d["Changed"] = append(d["Changed"], "appended")
	d["Added"] = append(d["Added"], "appended")
	want = http.Header{"Changed": {"new1", "new2", "appended"}, "Added": {"a", "appended"}, "Deleted": {}}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("after changes elsewhere, headerChanges = %#v, want %#v", d, want)
	}
	if d := headerChanges(base, base.Clone()); d != nil {
		t.Errorf("no changes: %#v", d)
	}
}
