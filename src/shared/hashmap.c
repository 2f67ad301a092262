/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "hashmap.h"
#include "macro.h"

typedef struct Entry {
        struct Entry *next;
        const char *key;
        void *value;
} Entry;

struct Hashmap {
        Entry **buckets;
        size_t n_buckets;
        size_t n_entries;
};

static size_t hash_string(const char *s) {
        /* FNV-1a: keys are UUIDs and bus names, not attacker-chosen at scale. */
        size_t h = 14695981039346656037ULL;
        for (; *s; s++) {
                h ^= (unsigned char) *s;
                h *= 1099511628211ULL;
        }
        return h;
}

Hashmap *hashmap_new(void) {
        Hashmap *h = calloc(1, sizeof(Hashmap));
        if (!h)
                return NULL;
        h->n_buckets = 64;
        h->buckets = calloc(h->n_buckets, sizeof(Entry *));
        if (!h->buckets)
                return mfree(h);
        return h;
}

Hashmap *hashmap_free(Hashmap *h) {
        if (!h)
                return NULL;
        for (size_t b = 0; b < h->n_buckets; b++)
                for (Entry *e = h->buckets[b], *n; e; e = n) {
                        n = e->next;
                        free(e);
                }
        free(h->buckets);
        return mfree(h);
}

static int hashmap_grow(Hashmap *h) {
        size_t n = h->n_buckets * 2;
        Entry **b = calloc(n, sizeof(Entry *));
        if (!b)
                return -ENOMEM;
        for (size_t i = 0; i < h->n_buckets; i++)
                for (Entry *e = h->buckets[i], *next; e; e = next) {
                        next = e->next;
                        size_t k = hash_string(e->key) & (n - 1);
                        e->next = b[k];
                        b[k] = e;
                }
        free(h->buckets);
        h->buckets = b;
        h->n_buckets = n;
        return 0;
}

int hashmap_put(Hashmap *h, const char *key, void *value) {
        if (hashmap_get(h, key))
                return -EEXIST;
        if (h->n_entries >= h->n_buckets * 2 && hashmap_grow(h) < 0)
                return -ENOMEM;
        Entry *e = malloc(sizeof(Entry));
        if (!e)
                return -ENOMEM;
        size_t k = hash_string(key) & (h->n_buckets - 1);
        *e = (Entry) { .next = h->buckets[k], .key = key, .value = value };
        h->buckets[k] = e;
        h->n_entries++;
        return 0;
}

void *hashmap_get(Hashmap *h, const char *key) {
        for (Entry *e = h->buckets[hash_string(key) & (h->n_buckets - 1)]; e; e = e->next)
                if (streq(e->key, key))
                        return e->value;
        return NULL;
}

void *hashmap_remove(Hashmap *h, const char *key) {
        for (Entry **p = &h->buckets[hash_string(key) & (h->n_buckets - 1)]; *p; p = &(*p)->next)
                if (streq((*p)->key, key)) {
                        Entry *e = *p;
                        void *v = e->value;
                        *p = e->next;
                        free(e);
                        h->n_entries--;
                        return v;
                }
        return NULL;
}

size_t hashmap_size(Hashmap *h) {
        return h ? h->n_entries : 0;
}

void *hashmap_iterate(Hashmap *h, HashmapIter *i) {
        /* i->entry is the entry to return next; it was read before the caller could free the previous one. */
        while (!i->entry) {
                if (i->bucket >= h->n_buckets)
                        return NULL;
                i->entry = h->buckets[i->bucket++];
        }
        Entry *e = i->entry;
        i->entry = e->next;
        return e->value;
}
