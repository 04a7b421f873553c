// SPDX-License-Identifier: GPL-2.0
/* rmirror C shim: static-inline kernel helpers and C tables, called from Rust (see shim.h). */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device.h>
#include <linux/err.h>
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
#include <net/sock.h>
#include <net/tcp.h>
#include "shim.h"

/* ---------------------------------------------------------------- disks */

static void rmirror_submit_bio(struct bio *bio)
{
	rmirror_rs_submit_bio(bio->bi_bdev->bd_disk->private_data, bio);
}

static int rmirror_open(struct gendisk *disk, blk_mode_t mode)
{
	return rmirror_rs_open(disk->private_data);
}

static const struct block_device_operations rmirror_fops = {
	.owner = THIS_MODULE,
	.submit_bio = rmirror_submit_bio,
	.open = rmirror_open,
};

/* Attribute ids: keep in sync with `sysfs::Attr` in rust/driver/sysfs.rs. */
#define RMIRROR_ATTR(_id, _name, _mode)							\
static ssize_t _name##_show(struct device *d, struct device_attribute *a, char *page)	\
{ return rmirror_rs_sysfs_show(dev_to_disk(d)->private_data, _id, page); }		\
static ssize_t _name##_store(struct device *d, struct device_attribute *a,		\
			     const char *buf, size_t len)				\
{ return rmirror_rs_sysfs_store(dev_to_disk(d)->private_data, _id, buf, len); }	\
static DEVICE_ATTR(_name, _mode, _name##_show, _name##_store)

RMIRROR_ATTR(0, name, 0444);
RMIRROR_ATTR(1, role, 0444);
RMIRROR_ATTR(2, cstate, 0444);
RMIRROR_ATTR(3, peer, 0444);
RMIRROR_ATTR(4, local, 0444);
RMIRROR_ATTR(5, protocol, 0444);
RMIRROR_ATTR(6, backing, 0444);
RMIRROR_ATTR(7, inline_max, 0644);
RMIRROR_ATTR(8, stats, 0444);

static struct attribute *rmirror_attrs[] = {
	&dev_attr_name.attr, &dev_attr_role.attr, &dev_attr_cstate.attr, &dev_attr_peer.attr,
	&dev_attr_local.attr, &dev_attr_protocol.attr, &dev_attr_backing.attr,
	&dev_attr_inline_max.attr, &dev_attr_stats.attr, NULL,
};

static const struct attribute_group rmirror_attr_group = {
	.name = "rmirror",
	.attrs = rmirror_attrs,
};

static const struct attribute_group *rmirror_attr_groups[] = { &rmirror_attr_group, NULL };

struct gendisk *rmirror_disk_create(void *dev, int index, struct block_device *backing,
				    sector_t capacity, unsigned int max_sectors)
{
	struct queue_limits lim;
	struct gendisk *disk;
	int err;

	blk_set_stacking_limits(&lim);
	blk_stack_limits(&lim, bdev_limits(backing), 0);
	lim.max_hw_sectors = min(lim.max_hw_sectors, max_sectors);
	lim.max_user_sectors = 0;
	/* Discard and write-zeroes are not mirrored yet, so they are not advertised. */
	lim.max_hw_discard_sectors = 0;
	lim.max_user_discard_sectors = 0;
	lim.max_discard_sectors = 0;
	lim.max_write_zeroes_sectors = 0;
	lim.max_hw_wzeroes_unmap_sectors = 0;
	lim.max_user_wzeroes_unmap_sectors = 0;
	lim.features &= ~(BLK_FEAT_ZONED | BLK_FEAT_NOWAIT | BLK_FEAT_POLL | BLK_FEAT_DAX);
	/* Flush and FUA are honoured on both sides. */
	lim.features |= BLK_FEAT_WRITE_CACHE | BLK_FEAT_FUA;

	disk = blk_alloc_disk(&lim, NUMA_NO_NODE);
	if (IS_ERR(disk))
		return disk;
	disk->flags |= GENHD_FL_NO_PART;
	disk->fops = &rmirror_fops;
	disk->private_data = dev;
	snprintf(disk->disk_name, sizeof(disk->disk_name), "rmirror%d", index);
	set_capacity(disk, capacity);
	err = device_add_disk(NULL, disk, rmirror_attr_groups);
	if (err) {
		put_disk(disk);
		return ERR_PTR(err);
	}
	return disk;
}

void rmirror_disk_destroy(struct gendisk *disk)
{
	del_gendisk(disk);
	put_disk(disk);
}

/* Refuse removal while the disk is open; otherwise mark it so that no new open succeeds. */
int rmirror_disk_begin_remove(struct gendisk *disk)
{
	int ret = 0;

	mutex_lock(&disk->open_mutex);
	if (disk_openers(disk))
		ret = -EBUSY;
	else
		rmirror_rs_mark_removing(disk->private_data);
	mutex_unlock(&disk->open_mutex);
	return ret;
}

sector_t rmirror_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

/* ---------------------------------------------------------------- bios */

struct bio_set *rmirror_bioset_create(void)
{
	struct bio_set *bs = kzalloc(sizeof(*bs), GFP_KERNEL);

	if (!bs)
		return NULL;
	if (bioset_init(bs, BIO_POOL_SIZE, 0, 0)) {
		kfree(bs);
		return NULL;
	}
	return bs;
}

void rmirror_bioset_destroy(struct bio_set *bs)
{
	bioset_exit(bs);
	kfree(bs);
}

void rmirror_bio_remap(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
	submit_bio_noacct(bio);
}

void rmirror_bio_copy_to_buf(struct bio *bio, void *buf, size_t len)
{
	struct bvec_iter iter;
	struct bio_vec bv;
	size_t off = 0;

	bio_for_each_segment(bv, bio, iter) {
		if (WARN_ON_ONCE(off + bv.bv_len > len))
			return;
		memcpy_from_bvec(buf + off, &bv);
		off += bv.bv_len;
	}
}

static void rmirror_clone_endio(struct bio *clone)
{
	void *req = clone->bi_private;
	u8 status = clone->bi_status;

	bio_put(clone);
	rmirror_rs_clone_endio(req, status);
}

int rmirror_bio_submit_clone(struct bio *orig, struct block_device *bdev, struct bio_set *bs, void *req)
{
	struct bio *clone = bio_alloc_clone(bdev, orig, GFP_NOIO, bs);

	if (!clone)
		return -ENOMEM;
	clone->bi_end_io = rmirror_clone_endio;
	clone->bi_private = req;
	submit_bio_noacct(clone);
	return 0;
}

void rmirror_bio_endio(struct bio *bio, u8 status)
{
	bio->bi_status = status;
	bio_endio(bio);
}

/* Synchronously write a kernel buffer (kmalloc'ed or vmalloc'ed) at @sector. */
int rmirror_write_sync(struct block_device *bdev, sector_t sector, const void *buf, size_t len,
		       bool preflush, bool fua)
{
	blk_opf_t opf = REQ_OP_WRITE | REQ_SYNC | (preflush ? REQ_PREFLUSH : 0) | (fua ? REQ_FUA : 0);
	unsigned int nr = DIV_ROUND_UP(offset_in_page(buf) + len, PAGE_SIZE);
	struct bio *bio;
	size_t done = 0;
	int ret;

	if (nr > BIO_MAX_VECS)
		return -EINVAL;
	bio = bio_alloc(bdev, nr, opf, GFP_NOIO);
	bio->bi_iter.bi_sector = sector;
	while (done < len) {
		const void *p = buf + done;
		unsigned int off = offset_in_page(p);
		unsigned int n = min_t(size_t, PAGE_SIZE - off, len - done);
		struct page *page = is_vmalloc_addr(p) ? vmalloc_to_page(p) : virt_to_page(p);

		if (bio_add_page(bio, page, n, off) != n) {
			bio_put(bio);
			return -EIO;
		}
		done += n;
	}
	ret = submit_bio_wait(bio);
	bio_put(bio);
	return ret;
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
	err = kernel_connect(sock, (struct sockaddr_unsized *)&sin, sizeof(sin), 0);
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

struct task_struct *rmirror_thread_start(int (*fn)(void *), void *data, const char *name)
{
	struct task_struct *t = kthread_create(fn, data, "%s", name);

	if (IS_ERR(t))
		return t;
	get_task_struct(t);
	wake_up_process(t);
	return t;
}

int rmirror_thread_stop(struct task_struct *task)
{
	int ret = kthread_stop(task);

	put_task_struct(task);
	return ret;
}

/* ---------------------------------------------------------------- allocation scopes */

unsigned int rmirror_noio_save(void)
{
	return memalloc_noio_save();
}

void rmirror_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}
