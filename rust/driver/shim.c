// SPDX-License-Identifier: GPL-2.0
/* rmirror C shim: static-inline kernel helpers, macros and C tables, called from Rust (see shim.h).
 * Nothing here knows rmirror's own types: the Rust side is reached through opaque pointers. */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device.h>
#include <linux/debugfs.h>
#include <linux/err.h>
#include <linux/fault-inject.h>
#include <linux/highmem.h>
#include <linux/in.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/net.h>
#include <linux/sched/mm.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/tcp.h>
#include <linux/vmalloc.h>
#include <linux/wait_bit.h>
#include <net/sock.h>
#include <net/tcp.h>
#include "shim.h"

/* ---------------------------------------------------------------- disks */

/*
 * A bio-based disk stacked on a backing device. Its private_data is the Rust side's opaque
 * pointer (bindings/disk.rs), passed back to the rmirror_rs_disk_* dispatchers; the sysfs
 * attributes are described by the Rust side and built here (one group, dev_ext_attribute per
 * attribute with its index in ->var).
 */
struct rmirror_disk {
	struct gendisk *disk;
	struct attribute_group group;
	const struct attribute_group *groups[2];
	struct attribute **ptrs;
	unsigned int nattrs;
	struct dev_ext_attribute attrs[];
};

static void rmirror_submit_bio(struct bio *bio)
{
	rmirror_rs_disk_submit_bio(bio->bi_bdev->bd_disk->private_data, bio);
}

static int rmirror_open(struct gendisk *disk, blk_mode_t mode)
{
	return rmirror_rs_disk_open(disk->private_data);
}

static const struct block_device_operations rmirror_fops = {
	.owner = THIS_MODULE,
	.submit_bio = rmirror_submit_bio,
	.open = rmirror_open,
};

static ssize_t rmirror_attr_show(struct device *d, struct device_attribute *a, char *page)
{
	struct dev_ext_attribute *ea = container_of(a, struct dev_ext_attribute, attr);

	return rmirror_rs_disk_show(dev_to_disk(d)->private_data, (uintptr_t)ea->var, page);
}

static ssize_t rmirror_attr_store(struct device *d, struct device_attribute *a, const char *buf,
				  size_t len)
{
	struct dev_ext_attribute *ea = container_of(a, struct dev_ext_attribute, attr);

	return rmirror_rs_disk_store(dev_to_disk(d)->private_data, (uintptr_t)ea->var, buf, len);
}

static void rmirror_disk_free(struct rmirror_disk *d)
{
	kfree(d->ptrs);
	kfree(d);
}

struct rmirror_disk *rmirror_disk_create(void *priv, const char *name, struct block_device *backing,
					 sector_t capacity, unsigned int max_sectors,
					 const char *group, const struct rmirror_attr_desc *attrs,
					 unsigned int nattrs)
{
	struct rmirror_disk *d;
	struct queue_limits lim;
	struct gendisk *disk;
	unsigned int i;
	int err;

	d = kzalloc(struct_size(d, attrs, nattrs), GFP_KERNEL);
	if (!d)
		return ERR_PTR(-ENOMEM);
	d->ptrs = kcalloc(nattrs + 1, sizeof(*d->ptrs), GFP_KERNEL);
	if (!d->ptrs) {
		kfree(d);
		return ERR_PTR(-ENOMEM);
	}
	for (i = 0; i < nattrs; i++) {
		struct dev_ext_attribute *ea = &d->attrs[i];

		sysfs_attr_init(&ea->attr.attr);
		ea->attr.attr.name = attrs[i].name;
		ea->attr.attr.mode = attrs[i].writable ? 0644 : 0444;
		ea->attr.show = rmirror_attr_show;
		ea->attr.store = attrs[i].writable ? rmirror_attr_store : NULL;
		ea->var = (void *)(uintptr_t)i;
		d->ptrs[i] = &ea->attr.attr;
	}
	d->nattrs = nattrs;
	d->group.name = group;
	d->group.attrs = d->ptrs;
	d->groups[0] = &d->group;

	/*
	 * Stacked limits, minus what the driver does not carry out: only reads, writes, flushes and
	 * FUA reach it. Discard, write-zeroes and secure erase are not advertised (the block layer
	 * then refuses them with EOPNOTSUPP before any bio is built), nor zones, nowait, polling, DAX.
	 */
	blk_set_stacking_limits(&lim);
	blk_stack_limits(&lim, bdev_limits(backing), 0);
	lim.max_hw_sectors = min(lim.max_hw_sectors, max_sectors);
	lim.max_user_sectors = 0;
	lim.max_hw_discard_sectors = 0;
	lim.max_user_discard_sectors = 0;
	lim.max_discard_sectors = 0;
	lim.max_secure_erase_sectors = 0;
	lim.max_write_zeroes_sectors = 0;
	lim.max_hw_wzeroes_unmap_sectors = 0;
	lim.max_user_wzeroes_unmap_sectors = 0;
	lim.features &= ~(BLK_FEAT_ZONED | BLK_FEAT_POLL | BLK_FEAT_DAX);
	/* REQ_NOWAIT bios are ended with BLK_STS_AGAIN where a write would wait (request.rs). */
	if (bdev_nowait(backing))
		lim.features |= BLK_FEAT_NOWAIT;
	/*
	 * Stable writes: a write's pages do not change while it is in flight (writers of the page
	 * cache wait for its writeback), because the same pages go to the local disk and to the peer,
	 * which could otherwise get different data; under protocols B and C the network may also
	 * read them later than the local disk does (zero copy, rmirror_sock_send_bio). DRBD sets
	 * it for the same reason.
	 */
	lim.features |= BLK_FEAT_WRITE_CACHE | BLK_FEAT_FUA | BLK_FEAT_IO_STAT | BLK_FEAT_STABLE_WRITES;

	disk = blk_alloc_disk(&lim, NUMA_NO_NODE);
	if (IS_ERR(disk)) {
		rmirror_disk_free(d);
		return ERR_CAST(disk);
	}
	disk->flags |= GENHD_FL_NO_PART;
	disk->fops = &rmirror_fops;
	disk->private_data = priv;
	strscpy(disk->disk_name, name, sizeof(disk->disk_name));
	set_capacity(disk, capacity);
	err = device_add_disk(NULL, disk, d->groups);
	if (err) {
		put_disk(disk);
		rmirror_disk_free(d);
		return ERR_PTR(err);
	}
	d->disk = disk;
	return d;
}

/* After del_gendisk no callback runs any more: fops and attributes are gone. */
void rmirror_disk_destroy(struct rmirror_disk *d)
{
	del_gendisk(d->disk);
	put_disk(d->disk);
	rmirror_disk_free(d);
}

/*
 * Refuse removal while the disk is open; otherwise call back (under the open mutex, so no open
 * can slip in between) to mark it so that no new open succeeds.
 */
int rmirror_disk_begin_remove(struct rmirror_disk *d)
{
	struct gendisk *disk = d->disk;
	int ret = 0;

	mutex_lock(&disk->open_mutex);
	if (disk_openers(disk))
		ret = -EBUSY;
	else
		rmirror_rs_disk_mark_removing(disk->private_data);
	mutex_unlock(&disk->open_mutex);
	return ret;
}

/* The open mutex, so a caller can act while no open can begin (see rmirror_disk_openers). */
void rmirror_disk_open_lock(struct rmirror_disk *d)
{
	mutex_lock(&d->disk->open_mutex);
}

void rmirror_disk_open_unlock(struct rmirror_disk *d)
{
	mutex_unlock(&d->disk->open_mutex);
}

/* Openers of the disk; stable while the open mutex is held. */
unsigned int rmirror_disk_openers(struct rmirror_disk *d)
{
	return disk_openers(d->disk);
}

sector_t rmirror_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

struct file *rmirror_bdev_open_excl(const char *path, void *holder)
{
	return bdev_file_open_by_path(path, BLK_OPEN_READ | BLK_OPEN_WRITE | BLK_OPEN_EXCL, holder, NULL);
}

/* ---------------------------------------------------------------- bios */

/*
 * A bio set whose clones carry front_pad bytes of per-clone data in front of the bio (as
 * device-mapper does), and a count of clones not yet freed: destroy waits for it to drop to 0.
 */
struct rmirror_bioset {
	struct bio_set bs;
	atomic_t live;
};

struct rmirror_bioset *rmirror_bioset_create(unsigned int front_pad)
{
	struct rmirror_bioset *rbs = kzalloc(sizeof(*rbs), GFP_KERNEL);

	if (!rbs)
		return NULL;
	if (bioset_init(&rbs->bs, BIO_POOL_SIZE, front_pad, 0)) {
		kfree(rbs);
		return NULL;
	}
	return rbs;
}

void rmirror_bioset_drain(struct rmirror_bioset *rbs)
{
	wait_var_event(&rbs->live, !atomic_read(&rbs->live));
}

void rmirror_bioset_destroy(struct rmirror_bioset *rbs)
{
	rmirror_bioset_drain(rbs);
	bioset_exit(&rbs->bs);
	kfree(rbs);
}

/*
 * A clone of @orig for @bdev from @rbs (GFP_NOIO: the mempool waits rather than fails), not
 * submitted yet; @end_io runs at its completion. NULL only if integrity data cannot be cloned.
 */
struct bio *rmirror_clone_alloc(struct bio *orig, struct block_device *bdev,
				struct rmirror_bioset *rbs, bio_end_io_t *end_io)
{
	struct bio *clone = bio_alloc_clone(bdev, orig, GFP_NOIO, &rbs->bs);

	if (!clone)
		return NULL;
	clone->bi_end_io = end_io;
	/* The caller decided not to wait (REQ_NOWAIT) before cloning; the local half must not fail
	 * with BLK_STS_AGAIN once the peer half is under way (it would count as a disk failure). */
	clone->bi_opf &= ~REQ_NOWAIT;
	atomic_inc(&rbs->live);
	return clone;
}

/* Frees a clone from rmirror_clone_alloc; the last one wakes rmirror_bioset_drain. */
void rmirror_clone_free(struct bio *clone)
{
	struct rmirror_bioset *rbs = container_of(clone->bi_pool, struct rmirror_bioset, bs);

	bio_put(clone);
	if (atomic_dec_and_test(&rbs->live))
		wake_up_var(&rbs->live);
}

void rmirror_bio_remap(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
	submit_bio_noacct(bio);
}

void rmirror_bio_submit(struct bio *bio)
{
	submit_bio_noacct(bio);
}

/*
 * I/O accounting of a bio submitted to our disk (iostat), when the queue's iostats are on:
 * returns whether it started, and its start time in @start (any jiffies value, 0 included).
 */
bool rmirror_acct_start(struct bio *bio, unsigned long *start)
{
	if (!blk_queue_io_stat(bio->bi_bdev->bd_disk->queue))
		return false;
	*start = bio_start_io_acct(bio);
	return true;
}

/* The end of an accounting rmirror_acct_start() began. */
void rmirror_acct_end(struct bio *bio, unsigned long start)
{
	bio_end_io_acct(bio, start);
}

void rmirror_bio_endio(struct bio *bio, u8 status)
{
	bio->bi_status = status;
	bio_endio(bio);
}

/* Copies the data of @bio (its current iterator) into @buf, at most @len bytes; returns the
 * bytes copied. @buf is a kmalloc'ed or vmalloc'ed buffer. */
size_t rmirror_bio_copy_to(struct bio *bio, void *buf, size_t len)
{
	struct bio_vec bv;
	struct bvec_iter it;
	size_t done = 0;

	bio_for_each_segment(bv, bio, it) {
		if (done + bv.bv_len > len)
			break;
		memcpy_from_bvec(buf + done, &bv);
		done += bv.bv_len;
	}
	return done;
}

size_t rmirror_bio_copy_from(struct bio *bio, const void *buf, size_t len)
{
	struct bio_vec bv;
	struct bvec_iter it;
	size_t done = 0;

	bio_for_each_segment(bv, bio, it) {
		if (done + bv.bv_len > len)
			break;
		memcpy_to_bvec(&bv, buf + done);
		done += bv.bv_len;
	}
	return done;
}

/*
 * A bio for @len bytes of a kmalloc'ed or vmalloc'ed buffer at @sector (the Rust side only
 * passes heap buffers it owns); NULL if the buffer needs more than BIO_MAX_VECS pages.
 */
static struct bio *rmirror_buf_bio(struct block_device *bdev, sector_t sector, void *buf, size_t len, blk_opf_t opf)
{
	unsigned int nr = DIV_ROUND_UP(offset_in_page(buf) + len, PAGE_SIZE);
	struct bio *bio;
	size_t done = 0;

	if (nr > BIO_MAX_VECS)
		return NULL;
	bio = bio_alloc(bdev, nr, opf, GFP_NOIO);
	bio->bi_iter.bi_sector = sector;
	while (done < len) {
		void *p = buf + done;
		unsigned int off = offset_in_page(p);
		unsigned int n = min_t(size_t, PAGE_SIZE - off, len - done);
		struct page *page = is_vmalloc_addr(p) ? vmalloc_to_page(p) : virt_to_page(p);

		if (bio_add_page(bio, page, n, off) != n) {
			bio_put(bio);
			return NULL;
		}
		done += n;
	}
	if (is_vmalloc_addr(buf) && op_is_write(opf))
		flush_kernel_vmap_range(buf, len);
	return bio;
}

/* The flags of a data write with the given cache semantics. */
static blk_opf_t rmirror_write_opf(bool preflush, bool fua)
{
	return REQ_OP_WRITE | REQ_SYNC | (preflush ? REQ_PREFLUSH : 0) | (fua ? REQ_FUA : 0);
}

/* Synchronously read or write @len bytes of a heap buffer at @sector. */
static int rmirror_rw_sync(struct block_device *bdev, sector_t sector, void *buf, size_t len, blk_opf_t opf)
{
	struct bio *bio = rmirror_buf_bio(bdev, sector, buf, len, opf);
	int ret;

	if (!bio)
		return -EINVAL;
	ret = submit_bio_wait(bio);
	if (is_vmalloc_addr(buf) && !op_is_write(opf))
		invalidate_kernel_vmap_range(buf, len);
	bio_put(bio);
	return ret;
}

/*
 * Write @len bytes of a heap buffer at @sector without waiting: @end_io runs at completion (any
 * context) with @private in bi_private, and must call rmirror_buf_bio_done(). The buffer must
 * stay allocated until then.
 */
int rmirror_write_async(struct block_device *bdev, sector_t sector, const void *buf, size_t len, bool preflush,
			bool fua, bio_end_io_t *end_io, void *private)
{
	struct bio *bio = rmirror_buf_bio(bdev, sector, (void *)buf, len, rmirror_write_opf(preflush, fua));

	if (!bio)
		return -EINVAL;
	bio->bi_end_io = end_io;
	bio->bi_private = private;
	submit_bio(bio);
	return 0;
}

/* The end of a bio from rmirror_write_async(): returns its status and private pointer, frees it. */
u8 rmirror_buf_bio_done(struct bio *bio, void **private)
{
	blk_status_t status = bio->bi_status;

	*private = bio->bi_private;
	bio_put(bio);
	return (u8)status;
}

int rmirror_write_sync(struct block_device *bdev, sector_t sector, const void *buf, size_t len,
		       bool preflush, bool fua)
{
	return rmirror_rw_sync(bdev, sector, (void *)buf, len, rmirror_write_opf(preflush, fua));
}

/* Synchronously read @len bytes at @sector into a kmalloc'ed or vmalloc'ed buffer. */
int rmirror_read_sync(struct block_device *bdev, sector_t sector, void *buf, size_t len)
{
	return rmirror_rw_sync(bdev, sector, buf, len, REQ_OP_READ | REQ_SYNC);
}

/* ---------------------------------------------------------------- sockets */

static void rmirror_sock_tune(struct socket *sock)
{
	sock->sk->sk_allocation = GFP_NOIO;
	sock->sk->sk_use_task_frag = false;
	/* Blocking calls wake up at least once a second so threads can notice a stop request. */
	sock->sk->sk_rcvtimeo = HZ;
	sock->sk->sk_sndtimeo = 10 * HZ;
}

static void rmirror_sockaddr(struct sockaddr_in *sin, u32 addr, u16 port)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(addr);
	sin->sin_port = htons(port);
}

/* Blocking receives on @sock return -EAGAIN after @ms without data (the timer tick of a
 * heartbeat thread). */
void rmirror_sock_set_rcvtimeo(struct socket *sock, unsigned int ms)
{
	WRITE_ONCE(sock->sk->sk_rcvtimeo, msecs_to_jiffies(ms));
}

/* Fixes @sock's send buffer at @bytes (as SO_SNDBUF does, but the size is not doubled; TCP no
 * longer grows it), so what a sender queues ahead of a later message stays bounded. */
void rmirror_sock_set_sndbuf(struct socket *sock, unsigned int bytes)
{
	struct sock *sk = sock->sk;

	lock_sock(sk);
	sk->sk_userlocks |= SOCK_SNDBUF_LOCK;
	WRITE_ONCE(sk->sk_sndbuf, max_t(int, min_t(unsigned int, bytes, INT_MAX / 2), SOCK_MIN_SNDBUF));
	sk->sk_write_space(sk);
	release_sock(sk);
}

/* A new TCP socket, tuned, with @sin filled in for @addr:@port. */
static int rmirror_sock_new(u32 addr, u16 port, struct sockaddr_in *sin, struct socket **res)
{
	int err = sock_create_kern(&init_net, AF_INET, SOCK_STREAM, IPPROTO_TCP, res);

	if (err)
		return err;
	rmirror_sock_tune(*res);
	rmirror_sockaddr(sin, addr, port);
	return 0;
}

int rmirror_sock_listen(u32 addr, u16 port, struct socket **res)
{
	struct sockaddr_in sin;
	struct socket *sock;
	int err;

	err = rmirror_sock_new(addr, port, &sin, &sock);
	if (err)
		return err;
	sock_set_reuseaddr(sock->sk);
	err = kernel_bind(sock, (struct sockaddr_unsized *)&sin, sizeof(sin));
	if (!err)
		err = kernel_listen(sock, 4);
	if (err) {
		sock_release(sock);
		return err;
	}
	*res = sock;
	return 0;
}

int rmirror_sock_accept(struct socket *lsock, struct socket **res)
{
	int err = kernel_accept(lsock, res, 0);

	if (!err) {
		rmirror_sock_tune(*res);
		tcp_sock_set_nodelay((*res)->sk);
	}
	return err;
}

int rmirror_sock_connect(u32 addr, u16 port, struct socket **res)
{
	struct sockaddr_in sin;
	struct socket *sock;
	int err;

	err = rmirror_sock_new(addr, port, &sin, &sock);
	if (err)
		return err;
	tcp_sock_set_nodelay(sock->sk);
	/* A connect waits at most a second (then -EINPROGRESS): the caller retries or stops. */
	sock->sk->sk_sndtimeo = HZ;
	err = kernel_connect(sock, (struct sockaddr_unsized *)&sin, sizeof(sin), 0);
	sock->sk->sk_sndtimeo = 10 * HZ;
	if (err) {
		sock_release(sock);
		return err;
	}
	*res = sock;
	return 0;
}

int rmirror_sock_send(struct socket *sock, const void *buf, size_t len, bool more)
{
	struct kvec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL | (more ? MSG_MORE : 0) };

	return kernel_sendmsg(sock, &msg, &iov, 1, len);
}

/*
 * Whether TCP may take references to every page @bv touches (not slab memory: sendpage_ok).
 * sendpages_ok() would miss the last page of a segment that starts inside one and ends inside
 * another; skb_splice_from_iter() warns and fails on such a page.
 */
static bool rmirror_bvec_lendable(const struct bio_vec *bv)
{
	struct page *p = bv->bv_page + (bv->bv_offset >> PAGE_SHIFT);
	struct page *last = bv->bv_page + ((bv->bv_offset + bv->bv_len - 1) >> PAGE_SHIFT);

	for (; p <= last; p++)
		if (!sendpage_ok(p))
			return false;
	return true;
}

/*
 * Sends the data of @bio from byte @skip on, in one sendmsg over the bio's own segment table (a
 * bvec iterator: no per-page call). MSG_MORE if @more.
 *
 * @lend: the caller keeps the bio's pages unchanged until the peer has the bytes (protocols B and
 * C end the bio only after the peer's ack). The socket then takes references to the pages instead
 * of copying them (MSG_SPLICE_PAGES: zero copy, as DRBD's _drbd_send_zc_bio), unless a page may
 * not be referenced that way (slab memory), when it copies as without @lend.
 * Returns the bytes sent (possibly fewer) or -errno.
 */
int rmirror_sock_send_bio(struct socket *sock, struct bio *bio, unsigned int skip, bool more, bool lend)
{
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL | (more ? MSG_MORE : 0) };
	struct bvec_iter iter;
	struct bio_vec bv;
	unsigned int nr = 0;

	if (skip >= bio->bi_iter.bi_size)
		return 0;
	bio_for_each_bvec(bv, bio, iter) {
		nr++;
		if (lend && !rmirror_bvec_lendable(&bv))
			lend = false;
	}
	if (lend)
		msg.msg_flags |= MSG_SPLICE_PAGES;
	iov_iter_bvec(&msg.msg_iter, ITER_SOURCE, __bvec_iter_bvec(bio->bi_io_vec, bio->bi_iter), nr,
		      bio->bi_iter.bi_size);
	/* a split bio starts inside its first segment (as the loop driver does) */
	msg.msg_iter.iov_offset = bio->bi_iter.bi_bvec_done;
	iov_iter_advance(&msg.msg_iter, skip);
	return sock_sendmsg(sock, &msg);
}

int rmirror_sock_recv(struct socket *sock, void *buf, size_t len)
{
	struct kvec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };

	return kernel_recvmsg(sock, &msg, &iov, 1, len, MSG_WAITALL | MSG_NOSIGNAL);
}

void rmirror_sock_shutdown(struct socket *sock)
{
	kernel_sock_shutdown(sock, SHUT_RDWR);
}

/*
 * Ends the connection at once: a reset to the peer, and what was queued to send or not yet
 * acknowledged by TCP is dropped, with the socket's references to pages lent by
 * rmirror_sock_send_bio (a shutdown would keep retransmitting them). Blocked senders and
 * receivers return with an error, as after a shutdown.
 */
void rmirror_sock_abort(struct socket *sock)
{
	tcp_abort(sock->sk, ECONNABORTED);
}

void rmirror_sock_release(struct socket *sock)
{
	sock_release(sock);
}

int rmirror_sock_peer(struct socket *sock, u32 *addr, u16 *port)
{
	struct sockaddr_in sin;
	int len = kernel_getpeername(sock, (struct sockaddr *)&sin);

	if (len < 0)
		return len;
	*addr = ntohl(sin.sin_addr.s_addr);
	*port = ntohs(sin.sin_port);
	return 0;
}

/* ---------------------------------------------------------------- threads */

#ifdef CONFIG_FAULT_INJECTION_DEBUG_FS
/* /sys/kernel/debug/fail_rmirror_thread/: make kernel thread starts fail (-ENOMEM), for tests. */
static DECLARE_FAULT_ATTR(rmirror_fail_thread);
static struct dentry *rmirror_fault_dir;
#endif

void rmirror_fault_init(void)
{
#ifdef CONFIG_FAULT_INJECTION_DEBUG_FS
	struct dentry *d = fault_create_debugfs_attr("fail_rmirror_thread", NULL, &rmirror_fail_thread);

	rmirror_fault_dir = IS_ERR(d) ? NULL : d;
#endif
}

void rmirror_fault_exit(void)
{
#ifdef CONFIG_FAULT_INJECTION_DEBUG_FS
	debugfs_remove_recursive(rmirror_fault_dir);
#endif
}

/* Creates and wakes a kthread holding a task reference (dropped by rmirror_thread_stop). */
struct task_struct *rmirror_thread_start(int (*fn)(void *), void *data, const char *name)
{
	struct task_struct *t;

#ifdef CONFIG_FAULT_INJECTION_DEBUG_FS
	if (should_fail(&rmirror_fail_thread, 1))
		return ERR_PTR(-ENOMEM);
#endif
	t = kthread_create(fn, data, "%s", name);
	if (IS_ERR(t))
		return t;
	get_task_struct(t);
	wake_up_process(t);
	return t;
}

/* Stops the thread: afterwards its function is not running and never will (it may never have run). */
int rmirror_thread_stop(struct task_struct *task)
{
	int ret = kthread_stop(task);

	put_task_struct(task);
	return ret;
}

/* ---------------------------------------------------------------- locks and allocation scopes */

unsigned long rmirror_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

bool rmirror_spin_trylock_irqsave(spinlock_t *lock, unsigned long *flags)
{
	unsigned long f;

	if (!spin_trylock_irqsave(lock, f))
		return false;
	*flags = f;
	return true;
}

void rmirror_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

/*
 * The control device's open files pin the module (upstream's Rust miscdevice leaves the fops
 * owner unset): an ioctl may sleep (EVENTS waits for events), and the module's code must not go
 * away under it.
 */
bool rmirror_module_get(void)
{
	return try_module_get(THIS_MODULE);
}

void rmirror_module_put(void)
{
	module_put(THIS_MODULE);
}

unsigned int rmirror_noio_save(void)
{
	return memalloc_noio_save();
}

void rmirror_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}
